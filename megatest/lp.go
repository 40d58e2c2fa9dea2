package megatest

import (
	"bytes"
	"errors"
)

var errJSONP = errors.New("megatest: malformed JSONP answer")

var jsonpPrefix = []byte("/**/")

// lpBody walks a long-poll answer body: a JSON array of messages, or the
// JSONP form /**/F([...]); — calling msg with the start index of each
// message in body. It returns how many messages there were.
func lpBody(body []byte, msg func(b []byte, i int) (int, error)) (int, error) {
	i := skipWS(body, 0)
	jsonp := false
	if bytes.HasPrefix(body[i:], jsonpPrefix) {
		i += len(jsonpPrefix) // the worker's, before the callback (Rosetta Flash)
	}
	if i < len(body) && body[i] != '[' {
		// F( — a JavaScript identifier, dots allowed
		j := i
		for j < len(body) && (isIdent(body[j]) || body[j] == '.') {
			j++
		}
		if j == i || j >= len(body) || body[j] != '(' {
			return 0, errJSONP
		}
		i, jsonp = skipWS(body, j+1), true
	}
	count := 0
	i, err := scanArray(body, i, func(b []byte, i int) (int, error) {
		count++
		return msg(b, i)
	})
	if err != nil {
		return 0, err
	}
	i = skipWS(body, i)
	if jsonp {
		if i >= len(body) || body[i] != ')' {
			return 0, errJSONP
		}
		i = skipWS(body, i+1)
		if i < len(body) && body[i] == ';' {
			i = skipWS(body, i+1)
		}
	}
	if i != len(body) {
		return 0, errJSON
	}
	return count, nil
}

func isIdent(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '$'
}
