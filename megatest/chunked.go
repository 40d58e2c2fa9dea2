package megatest

import "errors"

var errChunkLarge = errors.New("megatest: chunk over 1 MiB")

const maxChunk = 1 << 20

// parseChunk parses one chunk of a chunked body (RFC 9112 §7.1) at the
// front of b. payload aliases b. last reports the last chunk ("0", then
// trailer fields, then a blank line), which is consumed whole.
func parseChunk(b []byte) (n int, payload []byte, last bool, err error) {
	// chunk-size [ chunk-ext ] CRLF
	size, i := 0, 0
	for ; i < len(b); i++ {
		d := unhex(b[i])
		if d < 0 {
			break
		}
		size = size<<4 | d
		if size > maxChunk {
			return 0, nil, false, errChunkLarge
		}
	}
	if i == len(b) {
		return 0, nil, false, errNeedMore
	}
	if i == 0 {
		return 0, nil, false, errFraming
	}
	lineEnd := -1
	for j := i; j < len(b); j++ {
		if b[j] == '\n' {
			lineEnd = j + 1
			break
		}
		if j-i > 1024 {
			return 0, nil, false, errFraming
		}
	}
	if lineEnd < 0 {
		return 0, nil, false, errNeedMore
	}
	if c := b[i]; c != ';' && c != '\r' && c != '\n' && c != ' ' && c != '\t' {
		return 0, nil, false, errFraming
	}
	if size == 0 {
		// trailer-section CRLF: lines until a blank one
		j := lineEnd
		for {
			k := j
			for k < len(b) && b[k] != '\n' {
				k++
			}
			if k == len(b) {
				return 0, nil, false, errNeedMore
			}
			if k == j || k == j+1 && b[j] == '\r' {
				return k + 1, nil, true, nil
			}
			if k-lineEnd > maxHead {
				return 0, nil, false, errFraming
			}
			j = k + 1
		}
	}
	end := lineEnd + size
	switch {
	case len(b) < end+1:
		return 0, nil, false, errNeedMore
	case b[end] == '\n':
		return end + 1, b[lineEnd:end], false, nil
	case b[end] != '\r':
		return 0, nil, false, errFraming
	case len(b) < end+2:
		return 0, nil, false, errNeedMore
	case b[end+1] != '\n':
		return 0, nil, false, errFraming
	}
	return end + 2, b[lineEnd:end], false, nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
