package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-resilient/resilient"
	_ "github.com/caddy-resilient/resilient/chaos"
)

func main() {
	caddycmd.Main()
}
