package manager

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The hand-written history file reads back as encoding/json wrote it.
func TestEncodeStateRoundTrips(t *testing.T) {
	st := hubState{Seed: 7, LastID: 42, Published: 3, Horizon: 5, Dropped: map[string]uint64{"i:a": 2},
		Messages: []stateMessage{
			{ID: 40, Kind: kindIDs, To: []string{"a", "b"}, Body: json.RawMessage(`{"id":40,"data":{"x":"\u00e9\n"}}`), Expires: 99},
			{ID: 41, Kind: kindChannel, Channel: "news", Body: json.RawMessage(`{"id":41,"channel":"news","data":1}`), Expires: 100},
			{ID: 42, Kind: kindBroadcast, Body: json.RawMessage(`{"id":42,"data":[]}`), Expires: 101},
		}}
	for _, in := range []hubState{st, {LastID: 1}, {}} {
		b, err := encodeState(&in)
		if err != nil {
			t.Fatal(err)
		}
		var out hubState
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		want, _ := json.Marshal(&in)
		got, _ := json.Marshal(&out)
		if !reflect.DeepEqual(want, got) {
			t.Errorf("read back\n%s\nwant\n%s", got, want)
		}
	}
}
