package integration

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// readmePath is the README whose ```caddyfile blocks are checked.
const readmePath = "../README.md"

// readmeFile is the file name Caddy's messages give for a README block.
const readmeFile = "README.md"

// A README block that documents syntax (with placeholders such as
// `<duration>` or `[probability 0.1 | first 3]`) rather than showing a
// Caddyfile says so on the line right before its fence. The marker is
// visible in the README's source, so a reader of either knows the block
// is not meant to load.
const (
	// markNotCaddyfile skips the adapt check; the block must still be
	// caddy fmt clean.
	markNotCaddyfile = "<!-- syntax: not a Caddyfile -->"
	// markNotFormatted skips both checks.
	markNotFormatted = "<!-- syntax: not a Caddyfile, not formatted -->"
	// markPrefix starts every marker, so a misspelt one is an error
	// rather than a silent no-op.
	markPrefix = "<!-- syntax:"
)

// readmeBlock is one ```caddyfile block of the README.
type readmeBlock struct {
	fence  int      // README line of the opening fence
	lines  []string // the block's text, the fence lines excluded
	format bool     // whether the block must be caddy fmt clean
	adapt  bool     // whether the block must adapt and load
}

// firstLine names the block in messages: its first non-blank line.
func (b readmeBlock) firstLine() string {
	for _, l := range b.lines {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return "(empty block)"
}

// where names the block for a reader who opens the README.
func (b readmeBlock) where() string {
	return fmt.Sprintf("%s:%d `%s`", readmeFile, b.fence, b.firstLine())
}

// TestReadmeCaddyfileSnippets checks every ```caddyfile block of
// README.md: it must be caddy fmt clean as written, and it must adapt
// with no error and no warning to JSON that loads as `caddy validate`
// would load it. Fragments are wrapped for the adapt check as
// readmeAdaptInput describes; blocks marked as syntax opt out as the
// mark* constants describe.
func TestReadmeCaddyfileSnippets(t *testing.T) {
	src, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := readmeCaddyfileBlocks(string(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) == 0 {
		t.Fatalf("no ```caddyfile blocks in %s", readmePath)
	}
	var formatted, adapted int
	for _, b := range blocks {
		if b.format {
			formatted++
		}
		if b.adapt {
			adapted++
		}
		t.Run(fmt.Sprintf("line_%d", b.fence), func(t *testing.T) {
			if !b.format && !b.adapt {
				t.Skipf("%s is marked %s", b.where(), markNotFormatted)
			}
			if b.format {
				readmeCheckFormat(t, b)
			}
			if b.adapt {
				readmeCheckAdapt(t, b)
			}
		})
	}
	t.Logf("%d ```caddyfile blocks in %s: %d get the caddy fmt check, %d the adapt check",
		len(blocks), readmePath, formatted, adapted)
}

// readmeFence matches an opening or closing code fence, indented as in a
// list item: the indentation, the fence, and the info string.
var readmeFence = regexp.MustCompile("^([ \t]*)(`{3,}|~{3,})(.*)$")

// readmeCaddyfileBlocks returns the ```caddyfile blocks of a README with
// the checks each one gets. Fences of any other language are skipped
// whole, so a fence shown inside one is not taken for a block.
func readmeCaddyfileBlocks(readme string) ([]readmeBlock, error) {
	lines := strings.Split(strings.ReplaceAll(readme, "\r\n", "\n"), "\n")
	var blocks []readmeBlock
	for i := 0; i < len(lines); i++ {
		if strings.HasPrefix(strings.TrimSpace(lines[i]), markPrefix) {
			if err := readmeCheckMarker(lines, i); err != nil {
				return nil, err
			}
			continue
		}
		m := readmeFence.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, fence, info := m[1], m[2], strings.Fields(m[3])
		open := i
		var body []string
		for i++; ; i++ {
			if i == len(lines) {
				return nil, fmt.Errorf("%s:%d: code fence never closed", readmeFile, open+1)
			}
			if c := readmeFence.FindStringSubmatch(lines[i]); c != nil &&
				c[2][0] == fence[0] && len(c[2]) >= len(fence) && strings.TrimSpace(c[3]) == "" {
				break
			}
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		if len(info) == 0 || !strings.EqualFold(info[0], "caddyfile") {
			continue
		}
		b := readmeBlock{fence: open + 1, lines: body, format: true, adapt: true}
		if open > 0 {
			switch strings.TrimSpace(lines[open-1]) {
			case markNotCaddyfile:
				b.adapt = false
			case markNotFormatted:
				b.format, b.adapt = false, false
			}
		}
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// readmeCheckMarker fails a marker at line i that is misspelt or does not
// stand right before a ```caddyfile fence: it would change nothing.
func readmeCheckMarker(lines []string, i int) error {
	mark := strings.TrimSpace(lines[i])
	if mark != markNotCaddyfile && mark != markNotFormatted {
		return fmt.Errorf("%s:%d: unknown marker %q; want %q or %q", readmeFile, i+1, mark, markNotCaddyfile, markNotFormatted)
	}
	if i+1 < len(lines) {
		if m := readmeFence.FindStringSubmatch(lines[i+1]); m != nil {
			if info := strings.Fields(m[3]); len(info) > 0 && strings.EqualFold(info[0], "caddyfile") {
				return nil
			}
		}
	}
	return fmt.Errorf("%s:%d: marker %q is not on the line right before a ```caddyfile fence", readmeFile, i+1, mark)
}

// readmeCheckFormat checks that caddy fmt leaves the block as written.
func readmeCheckFormat(t *testing.T, b readmeBlock) {
	t.Helper()
	written := strings.Join(b.lines, "\n")
	formatted := strings.TrimSuffix(string(caddyfile.Format([]byte(written))), "\n")
	if formatted == written {
		return
	}
	t.Errorf("%s is not caddy fmt clean (- as written, + as caddy fmt writes it):\n%s",
		b.where(), readmeDiff(b.fence+1, b.lines, strings.Split(formatted, "\n")))
}

// readmeDiff lists the lines that differ between written, whose first
// line is README line first, and formatted. Lines are quoted so that tabs
// and spaces, which caddy fmt cares about, can be told apart.
func readmeDiff(first int, written, formatted []string) string {
	n, m := len(written), len(formatted)
	// common[i][j] is the longest common subsequence of written[i:] and formatted[j:]
	common := make([][]int, n+1)
	for i := range common {
		common[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if written[i] == formatted[j] {
				common[i][j] = common[i+1][j+1] + 1
			} else {
				common[i][j] = max(common[i+1][j], common[i][j+1])
			}
		}
	}
	width := len(fmt.Sprintf("%s:%d", readmeFile, first+n))
	var out strings.Builder
	for i, j := 0, 0; i < n || j < m; {
		switch {
		case i < n && j < m && written[i] == formatted[j]:
			i, j = i+1, j+1
		case i < n && (j == m || common[i+1][j] >= common[i][j+1]):
			fmt.Fprintf(&out, "\t%-*s - %q\n", width, fmt.Sprintf("%s:%d", readmeFile, first+i), written[i])
			i++
		default:
			fmt.Fprintf(&out, "\t%-*s + %q\n", width, "", formatted[j])
			j++
		}
	}
	return out.String()
}

// readmeDirective matches a first token that can only be a directive name:
// site addresses hold a dot, a colon or a slash, or are localhost.
var readmeDirective = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// readmeAdaptInput returns the Caddyfile that the adapt check loads for a
// block. The top level of a Caddyfile holds only a global options block,
// snippet definitions and sites, so the block's first token decides:
//
//   - `{`, a site address, or anything else: the block is a whole
//     Caddyfile and is adapted as it is;
//   - `(name)`: the block defines a snippet; a site that imports it is
//     added after it;
//   - `transport`: the block is a reverse_proxy subdirective and goes
//     into `reverse_proxy 127.0.0.1:1 { }` inside a site;
//   - a directive name (lowercase letters, digits and `_`, such as
//     reverse_proxy, chaos or handle_errors, but not localhost) or a
//     named matcher `@name`: the block goes into a site.
//
// The site is `http://localhost:0 { }`. The wrapper lines are moved down
// to end on the README line of the fence, so that the block's lines keep
// their README line numbers in Caddy's messages.
func readmeAdaptInput(b readmeBlock) (string, error) {
	body := strings.Join(b.lines, "\n") + "\n"
	tokens, err := caddyfile.Tokenize([]byte(body), readmeFile)
	if err != nil {
		return "", err
	}
	if len(tokens) == 0 {
		return "", fmt.Errorf("the block holds no Caddyfile token")
	}
	var before []string
	after := ""
	switch first := tokens[0].Text; {
	case strings.HasPrefix(first, "(") && strings.HasSuffix(first, ")"):
		after = "\nhttp://localhost:0 {\n\timport " + strings.Trim(first, "()") + "\n}\n"
	case first == "transport":
		before = []string{"http://localhost:0 {", "reverse_proxy 127.0.0.1:1 {"}
		after = "}\n}\n"
	case first != "localhost" && readmeDirective.MatchString(first), strings.HasPrefix(first, "@"):
		before = []string{"http://localhost:0 {"}
		after = "}\n"
	}
	pad := max(0, b.fence-len(before))
	var in strings.Builder
	in.WriteString(strings.Repeat("\n", pad))
	for _, l := range before {
		in.WriteString(l + "\n")
	}
	in.WriteString(body)
	in.WriteString(after)
	return in.String(), nil
}

// readmeCheckAdapt adapts the block, wrapped by readmeAdaptInput, with
// Caddy's caddyfile adapter and loads the JSON as adaptValidate does.
// The adapter's own "not formatted" warning is left out: the wrapper and
// its padding are never formatted, and readmeCheckFormat already checks
// the block as written.
func readmeCheckAdapt(t *testing.T, b readmeBlock) {
	t.Helper()
	in, err := readmeAdaptInput(b)
	if err != nil {
		t.Fatalf("%s: %v", b.where(), err)
	}
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), map[string]any{"filename": readmeFile})
	if err != nil {
		t.Fatalf("%s does not adapt: %v", b.where(), err)
	}
	notFormatted, _ := caddyfile.FormattingDifference(readmeFile, []byte(in))
	for _, w := range warnings {
		if w != notFormatted {
			t.Errorf("%s adapts with a warning: %s", b.where(), w)
		}
	}
	adaptValidate(t, adapted)
}
