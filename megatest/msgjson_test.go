package megatest

import (
	"encoding/json"
	"testing"
)

func TestScanMessage(t *testing.T) {
	run := []byte("r1")
	cases := []struct {
		in   string
		err  error
		want msgInfo
	}{
		{`{"id":1764000000000001,"data":{"any":"json"}}`, nil, msgInfo{id: 1764000000000001}},
		{`{"id":5,"channel":"news","data":"hello"}`, nil, msgInfo{id: 5}},
		{` {"data":{"t":99,"k":7,"r":"r1"},"id":3} `, nil, msgInfo{id: 3, t: 99, seq: 7, kind: kindPub}},
		{`{"id":4,"data":{"r":"r1","b":2,"t":100,"extra":[1,{"x":null}]}}`, nil, msgInfo{id: 4, t: 100, seq: 2, kind: kindBcast}},
		{`{"id":4,"data":{"t":100,"b":2,"r":"other"}}`, nil, msgInfo{id: 4}}, // another run's
		{`{"id":4,"data":{"t":-1,"k":2,"r":"r1"}}`, nil, msgInfo{id: 4}},     // not our shape
		{`{"id":18446744073709551615,"data":0}`, nil, msgInfo{id: 1<<64 - 1}},
		{`{"id":"7","data":0}`, errNoID, msgInfo{}},
		{`{"id":18446744073709551616,"data":0}`, errNoID, msgInfo{}},
		{`{"id":1.5,"data":0}`, errNoID, msgInfo{}},
		{`{"id":01,"data":0}`, errNoID, msgInfo{}},
		{`{"data":{}}`, errNoID, msgInfo{}},
		{`{"id":1,"data":{}`, errJSON, msgInfo{}},
		{`{"id":1,"data":[1,]}`, errJSON, msgInfo{}},
		{`{"id":1,"data":"a\qb"}`, errJSON, msgInfo{}},
		{`{"id":1,"data":"\u12"}`, errJSON, msgInfo{}},
		{`{"id":1,"data":tru}`, errJSON, msgInfo{}},
		{`{"id":1} x`, errJSON, msgInfo{}},
		{`[{"id":1}]`, errJSON, msgInfo{}},
	}
	for _, c := range cases {
		var m msgInfo
		err := scanMessage([]byte(c.in), run, &m)
		if err != c.err || (err == nil && m != c.want) {
			t.Errorf("%s: got %+v, %v; want %+v, %v", c.in, m, err, c.want, c.err)
		}
	}
}

func TestScanMessageDepth(t *testing.T) {
	deep := `{"id":1,"data":`
	for range 100 {
		deep += "["
	}
	for range 100 {
		deep += "]"
	}
	deep += "}"
	var m msgInfo
	if err := scanMessage([]byte(deep), nil, &m); err != errTooDeep {
		t.Fatalf("err = %v, want errTooDeep", err)
	}
}

// Differential: whatever scanMessage accepts, encoding/json accepts, and
// it reads the same id.
func FuzzScanMessage(f *testing.F) {
	for _, s := range []string{`{"id":1,"data":{"t":1,"k":2,"r":"x"}}`, `{"id":2,"data":[1,"a\u00e9",{"b":null}],"channel":"c"}`, `{"id":3,"data":-1.5e+3}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m msgInfo
		if err := scanMessage(b, []byte("x"), &m); err != nil {
			return
		}
		var v struct {
			ID uint64 `json:"id"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("scanMessage accepted what encoding/json rejects (%v): %q", err, b)
		}
		if v.ID != m.id {
			t.Fatalf("id %d, encoding/json says %d: %q", m.id, v.ID, b)
		}
	})
}
