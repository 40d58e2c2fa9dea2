package ipc

// ValidName is the rule for client ids and channel names, everywhere they
// come in (client URLs, WebSocket commands, the publish API, tokens): 1 to
// 64 of [A-Za-z0-9_-]. They travel in frames and URLs unescaped.
func ValidName[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 || len(s) > MaxName {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// MaxName is the longest id or channel name.
const MaxName = 64
