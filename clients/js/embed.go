// Package jsclient embeds megacomet.js, the browser client, so workers
// serve it at GET /megacomet.js with nothing to install.
package jsclient

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
)

// Source is megacomet.js as it is in this directory.
//
//go:embed megacomet.js
var Source []byte

// ETag is Source's entity tag: a strong validator, the first 16 bytes of
// its SHA-256 in hex, quoted.
var ETag = func() string {
	sum := sha256.Sum256(Source)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}()
