package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A scenario can run a site of a Caddyfile in examples/ as the file has
// it (S12: the shipping site of egress.Caddyfile), so that its numbers
// are those of what a user copies. The harness changes only what
// running on loopback needs: the site's address, its reverse_proxy
// upstream, and the admin endpoint. The snippets and the other global
// options come along; the other sites stay out.

// exampleSite is one site of an example Caddyfile, ready to run on the
// harness's ports.
type exampleSite struct {
	File    string // relative to the repository root
	Address string // the site's address as written
	// globals are the example's global options but admin, as written
	globals []string
	// snippets are the example's snippets, as written
	snippets []string
	// body is the site from its opening brace on, as written; the
	// upstream of each reverse_proxy is at the offsets in upstreams
	body      string
	upstreams [][2]int
}

// loadExampleSite reads file (relative to root) and picks the site
// whose addresses include address.
func loadExampleSite(root, file, address string) (*exampleSite, error) {
	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		return nil, err
	}
	x, err := parseExampleSite(string(b), address)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	x.File = file
	return x, nil
}

// parseExampleSite picks the site at address out of a Caddyfile's text.
func parseExampleSite(src, address string) (*exampleSite, error) {
	toks, err := lexCaddyfile(src)
	if err != nil {
		return nil, err
	}
	entries, err := caddyfileEntries(toks)
	if err != nil {
		return nil, err
	}
	x := &exampleSite{Address: address}
	found := false
	for n, e := range entries {
		keys := toks[e.first:e.open]
		switch {
		case n == 0 && len(keys) == 0: // the global options
			for _, opt := range caddyfileOptions(toks, e) {
				if toks[opt.first].text != "admin" {
					x.globals = append(x.globals, src[toks[opt.first].start:toks[opt.last].end])
				}
			}
		case len(keys) == 1 && strings.HasPrefix(keys[0].text, "(") && strings.HasSuffix(keys[0].text, ")"):
			x.snippets = append(x.snippets, src[toks[e.first].start:toks[e.close].end])
		case slices.ContainsFunc(keys, func(t cfTok) bool { return strings.TrimSuffix(t.text, ",") == address }):
			if found {
				return nil, fmt.Errorf("site %s is written twice", address)
			}
			found = true
			base := toks[e.open].start
			x.body = src[base:toks[e.close].end]
			for i := e.open + 1; i < e.close; i++ {
				if toks[i].text != "reverse_proxy" || toks[i].quoted {
					continue
				}
				// the upstream: the first argument on the directive's line
				// that is not a matcher
				for j := i + 1; j < e.close && toks[j].line == toks[i].line; j++ {
					t := toks[j]
					if isBrace(t, "{") {
						break
					}
					if strings.HasPrefix(t.text, "@") || strings.HasPrefix(t.text, "/") || t.text == "*" {
						continue
					}
					x.upstreams = append(x.upstreams, [2]int{t.start - base, t.end - base})
					break
				}
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("no site %s", address)
	}
	if len(x.upstreams) == 0 {
		return nil, fmt.Errorf("site %s has no reverse_proxy with an upstream", address)
	}
	return x, nil
}

// config is the whole Caddyfile: the example's global options and
// snippets, and its site, listening at listen (host:port) and proxying
// to upstream (host:port, plain HTTP), with Caddy's admin endpoint at
// admin.
func (x *exampleSite) config(listen, admin, upstream string) string {
	var b strings.Builder
	b.WriteString("{\n")
	set := map[string]bool{}
	for _, g := range x.globals {
		name, _, _ := strings.Cut(strings.TrimSpace(g), " ")
		set[name] = true
		b.WriteString("\t" + g + "\n")
	}
	fmt.Fprintf(&b, "\tadmin %s\n", admin)
	for _, opt := range [][2]string{{"persist_config", "off"}, {"grace_period", "100ms"}, {"default_bind", "127.0.0.1"}} {
		if !set[opt[0]] {
			fmt.Fprintf(&b, "\t%s %s\n", opt[0], opt[1])
		}
	}
	b.WriteString("}\n\n")
	for _, s := range x.snippets {
		b.WriteString(s + "\n\n")
	}
	fmt.Fprintf(&b, "http://%s ", listen)
	at := 0
	for _, u := range x.upstreams {
		b.WriteString(x.body[at:u[0]])
		b.WriteString("http://" + upstream)
		at = u[1]
	}
	b.WriteString(x.body[at:])
	b.WriteString("\n")
	return b.String()
}

// cfTok is a Caddyfile token, with where it is in the source.
type cfTok struct {
	text       string
	start, end int // byte offsets, quotes included
	line       int
	quoted     bool
}

// lexCaddyfile splits a Caddyfile into tokens as Caddy's lexer does:
// whitespace separates, a token that starts with " or ` runs to the
// closing quote, and # starts a comment at the start of a token.
// Heredocs are not supported.
func lexCaddyfile(src string) ([]cfTok, error) {
	var toks []cfTok
	line := 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
			continue
		case c == ' ' || c == '\t' || c == '\r':
			i++
			continue
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			continue
		case strings.HasPrefix(src[i:], "<<"):
			return nil, fmt.Errorf("line %d: heredocs are not supported", line)
		}
		t := cfTok{start: i, line: line}
		if c == '"' || c == '`' {
			t.quoted = true
			var b strings.Builder
			for i++; ; i++ {
				if i >= len(src) {
					return nil, fmt.Errorf("line %d: unterminated %c", t.line, c)
				}
				if src[i] == '\n' {
					line++
				}
				if c == '"' && src[i] == '\\' && i+1 < len(src) && src[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				if src[i] == c {
					i++
					break
				}
				b.WriteByte(src[i])
			}
			t.text = b.String()
		} else {
			for i < len(src) && !strings.ContainsRune(" \t\r\n", rune(src[i])) {
				i++
			}
			t.text = src[t.start:i]
		}
		t.end = i
		toks = append(toks, t)
	}
	return toks, nil
}

// cfEntry is a top-level entry (global options, snippet or site): its
// first token, and its block's braces (token indices).
type cfEntry struct{ first, open, close int }

// caddyfileEntries splits tokens into top-level entries, each with a
// block.
func caddyfileEntries(toks []cfTok) ([]cfEntry, error) {
	var out []cfEntry
	for i := 0; i < len(toks); {
		e := cfEntry{first: i, open: -1}
		for j := i; j < len(toks) && toks[j].line == toks[i].line; j++ {
			if isBrace(toks[j], "{") {
				e.open = j
				break
			}
		}
		if e.open < 0 {
			return nil, fmt.Errorf("line %d: %q has no block: only Caddyfiles whose entries all have braces are supported", toks[i].line, toks[i].text)
		}
		c, err := closing(toks, e.open)
		if err != nil {
			return nil, err
		}
		e.close = c
		out = append(out, e)
		i = c + 1
	}
	if len(out) == 0 {
		return nil, errors.New("empty Caddyfile")
	}
	return out, nil
}

// cfOption is an option of a block: from its name to the end of its
// line, or to the end of its own block.
type cfOption struct{ first, last int }

// caddyfileOptions lists the options inside entry e's block.
func caddyfileOptions(toks []cfTok, e cfEntry) []cfOption {
	var out []cfOption
	for i := e.open + 1; i < e.close; {
		o := cfOption{first: i, last: i}
		for j := i; j < e.close && toks[j].line == toks[i].line; j++ {
			o.last = j
		}
		if isBrace(toks[o.last], "{") {
			if c, err := closing(toks, o.last); err == nil {
				o.last = c
			}
		}
		out = append(out, o)
		i = o.last + 1
	}
	return out
}

// closing finds the brace that closes the one at open.
func closing(toks []cfTok, open int) (int, error) {
	depth := 0
	for k := open; k < len(toks); k++ {
		switch {
		case isBrace(toks[k], "{"):
			depth++
		case isBrace(toks[k], "}"):
			depth--
			if depth == 0 {
				return k, nil
			}
		}
	}
	return 0, fmt.Errorf("line %d: the block opened here is not closed", toks[open].line)
}

func isBrace(t cfTok, b string) bool { return !t.quoted && t.text == b }
