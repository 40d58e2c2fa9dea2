// Package names holds the one rule for client ids, channel names, node and
// stream names: 1 to 64 of [A-Za-z0-9_-]. They travel in frames, URLs and
// NATS subjects unescaped. ipc.ValidName and config use it.
package names

// Max is the longest name.
const Max = 64

// Valid reports whether s follows the rule.
func Valid[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 || len(s) > Max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Match reports whether name is one of patterns: an exact name, or a
// prefix ending in '*' ("news-*", or "*" for any). The rule of token
// claims and of comet.presence_events.
func Match(patterns []string, name string) bool {
	for _, p := range patterns {
		if p == name || len(p) > 0 && p[len(p)-1] == '*' && len(name) >= len(p)-1 && name[:len(p)-1] == p[:len(p)-1] {
			return true
		}
	}
	return false
}
