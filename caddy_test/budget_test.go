package integration

import (
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
)

// The retry budget is spent by the retries that fail (SPEC §4 step 6):
// a dead upstream is held to the budget's share of the requests, while
// a flaky one that answers its retries gets them.

func budgetSite(addr, retry string) string {
	return proxySite(addr, `transport resilient {
			retry {
				backoff 1ms 1ms
				`+retry+`
			}
			breaker off
		}`)
}

func TestBudgetHoldsADeadUpstreamWithFiveAttempts(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })
	g := loadGateway(t, budgetSite(up.addr, "attempts 5\n budget 0.1 0"))
	const requests = 100
	for range requests {
		res, _ := g.get("/dead")
		res.Body.Close()
	}
	// without a budget: 500; every retry fails, so none gives its share
	// back: at most 10% of the requests are retried
	got := up.count.Load()
	if got > requests+requests/10+5 {
		t.Fatalf("the dead upstream got %d requests for %d: the budget allows ~%d", got, requests, requests+requests/10)
	}
	if got <= requests {
		t.Fatalf("the dead upstream got %d requests: the budget should still allow some retries", got)
	}
}

func TestBudgetIsNotOverdrawnByABurstOfRetries(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) })
	g := loadGateway(t, budgetSite(up.addr, "budget 0.2 0"))
	const requests = 50
	var wg sync.WaitGroup
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/burst", nil)
			res, err := g.Client.Do(req)
			if err == nil {
				res.Body.Close()
			}
		}()
	}
	wg.Wait()
	// retries in flight count as failed before they are answered, so
	// 50 requests asking for up to 100 retries at once get at most 10
	if got := up.count.Load(); got > requests+requests/5 {
		t.Fatalf("%d concurrent requests reached the upstream %d times: the budget allows %d", requests, got, requests+requests/5)
	}
}

func TestBudgetLetsAFlakyUpstreamHaveTheRetriesItAnswers(t *testing.T) {
	var mu sync.Mutex
	draw := rand.New(rand.NewPCG(19, 30))
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		mu.Lock()
		fail := draw.Float64() < 0.3
		mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	// no per-second floor: only the ratio, 20% of the requests, which a
	// 30% flaky upstream needs more than (~39% of requests are retried)
	g := loadGateway(t, budgetSite(up.addr, "budget 0.2 0"))
	const requests = 300
	ok := 0
	for range requests {
		res, _ := g.get("/flaky")
		if res.StatusCode == http.StatusOK {
			ok++
		}
	}
	retries := int(up.count.Load()) - requests
	denied := 0
	for _, e := range g.entries(requests) {
		if e.Denied == "budget" {
			denied++
		}
	}
	t.Logf("%d of %d succeeded, %d retries, %d refused by the budget", ok, requests, retries, denied)
	if retries <= requests/5 {
		t.Fatalf("%d retries: no more than the ratio alone allows (%d), so the retries that worked still spent it", retries, requests/5)
	}
	// with 3 attempts and 30%% failing ones, ~97.3%% succeed without any budget
	if ok < requests*96/100 || denied > 3 {
		t.Fatalf("%d of %d succeeded with %d retries refused by the budget: it refused retries that would have worked", ok, requests, denied)
	}
}
