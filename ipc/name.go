package ipc

import "github.com/megacomet/megacomet/internal/names"

// ValidName is the rule for client ids and channel names, everywhere they
// come in (client URLs, WebSocket commands, the publish API, tokens): 1 to
// 64 of [A-Za-z0-9_-]. They travel in frames and URLs unescaped.
func ValidName[T ~string | ~[]byte](s T) bool { return names.Valid(s) }

// MaxName is the longest id or channel name.
const MaxName = names.Max
