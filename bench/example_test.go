package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The shipping site of examples/egress.Caddyfile runs as the file has
// it: every line of its block is in the config, but its address and
// upstream; its snippet comes along, the other sites and the example's
// admin endpoint do not.
func TestExampleSiteRunsAsWritten(t *testing.T) {
	const file, address = "examples/egress.Caddyfile", "http://shipping.internal:8080"
	root := filepath.Join("..")
	x, err := loadExampleSite(root, file, address)
	if err != nil {
		t.Fatal(err)
	}
	conf := x.config("127.0.0.1:1111", "127.0.0.1:2222", "127.0.0.1:3333")
	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	// the site's block as written, from its address line to its end
	from := strings.Index(src, address+" {")
	if from < 0 {
		t.Fatalf("%s has no line %q", file, address+" {")
	}
	end := strings.Index(src[from:], "\n}\n")
	site := src[from : from+end+3]
	upstream := "https://api.shipping.example"
	if !strings.Contains(site, "reverse_proxy "+upstream) {
		t.Fatalf("the example's shipping site no longer proxies to %s: update this test", upstream)
	}
	want := strings.Replace(strings.Replace(site, address, "http://127.0.0.1:1111", 1), upstream, "http://127.0.0.1:3333", 1)
	if !strings.Contains(conf, want) {
		t.Fatalf("the site is not in the config as written:\n%s\nwant it to contain:\n%s", conf, want)
	}
	for _, s := range []string{"(problem) {", "admin 127.0.0.1:2222"} {
		if !strings.Contains(conf, s) {
			t.Errorf("config without %q:\n%s", s, conf)
		}
	}
	for _, s := range []string{"payments.internal", "catalog.internal", "localhost:2019", "shipping.internal", upstream} {
		if strings.Contains(conf, s) {
			t.Errorf("config still has %q:\n%s", s, conf)
		}
	}
}

// Braces inside quotes, placeholders and comments do not end a block;
// a matcher before the upstream is skipped; a missing site is an error.
func TestExampleSiteParsing(t *testing.T) {
	src := "{\n\tadmin localhost:2019 {\n\t\torigins a\n\t}\n\tservers {\n\t\tprotocols h1\n\t}\n}\n\n" +
		"(snip) {\n\trespond `{\"a\":\"}\"}` 500 # a } in a comment\n}\n\n" +
		"http://a.example:80, http://b.example:80 {\n\treverse_proxy /api/* https://up.example {\n\t\theader_up X \"{\"\n\t}\n\timport snip\n}\n\n" +
		"http://c.example {\n\trespond ok\n}\n"
	x, err := parseExampleSite(src, "http://b.example:80")
	if err != nil {
		t.Fatal(err)
	}
	conf := x.config("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
	want := "{\n\tservers {\n\t\tprotocols h1\n\t}\n\tadmin 127.0.0.1:2\n\tpersist_config off\n\tgrace_period 100ms\n\tdefault_bind 127.0.0.1\n}\n\n" +
		"(snip) {\n\trespond `{\"a\":\"}\"}` 500 # a } in a comment\n}\n\n" +
		"http://127.0.0.1:1 {\n\treverse_proxy /api/* http://127.0.0.1:3 {\n\t\theader_up X \"{\"\n\t}\n\timport snip\n}\n"
	if conf != want {
		t.Fatalf("config:\n%s\nwant:\n%s", conf, want)
	}
	if _, err := parseExampleSite(src, "http://d.example"); err == nil || !strings.Contains(err.Error(), "no site") {
		t.Fatalf("a missing site: %v, want an error naming it", err)
	}
	if _, err := parseExampleSite("http://a {\n\trespond `x\n}\n", "http://a"); err == nil {
		t.Fatal("an unterminated quote parsed")
	}
}
