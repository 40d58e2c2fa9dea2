package test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// historyAnswer is GET /history's answer.
type historyAnswer struct {
	Gap *struct {
		After, Before uint64
	}
	Messages []json.RawMessage
	More     bool
}

// curlHistory asks GET /history?query with curl.
func curlHistory(t *testing.T, api, query string) historyAnswer {
	t.Helper()
	out, err := exec.Command("curl", "-sS", "--fail-with-body", "http://"+api+"/history?"+query).Output()
	var a historyAnswer
	if err != nil || json.Unmarshal(out, &a) != nil {
		t.Fatalf("curl /history?%s: %v %s", query, err, out)
	}
	return a
}

func messageIDs(raw []json.RawMessage) []uint64 {
	var ids []uint64
	for _, m := range raw {
		var x struct{ ID uint64 }
		json.Unmarshal(m, &x)
		ids = append(ids, x.ID)
	}
	return ids
}

// GET /history reads what a replay would carry, without being a client:
// paged, with the gap a replay from that cursor announces, the same
// bytes, for a channel or an id, and across a reload.
func TestHistoryAPI(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": "history_size = 5"})
	var ids []uint64
	for i := range 8 {
		ids = append(ids, publish(t, s.API, fmt.Sprintf(`{"channel":"news","data":{"n":%d}}`, i))[0])
	}
	toAlice := publish(t, s.API, `[{"to":"alice","data":1},{"to":"alice","data":2}]`)

	first := curlHistory(t, s.API, "channel=news&limit=2")
	if got := messageIDs(first.Messages); fmt.Sprint(got) != fmt.Sprint(ids[3:5]) || !first.More || first.Gap != nil {
		t.Errorf("first page: %v more %v gap %v; want %v, more, no gap (no cursor given)", got, first.More, first.Gap, ids[3:5])
	}
	second := curlHistory(t, s.API, fmt.Sprintf("channel=news&limit=2&since=%d", ids[4]))
	last := curlHistory(t, s.API, fmt.Sprintf("channel=news&limit=2&since=%d", ids[6]))
	if got := messageIDs(append(second.Messages, last.Messages...)); fmt.Sprint(got) != fmt.Sprint(ids[5:]) || !second.More || last.More {
		t.Errorf("next pages: %v (more %v, %v), want %v", got, second.More, last.More, ids[5:])
	}
	gapped := curlHistory(t, s.API, fmt.Sprintf("channel=news&since=%d", ids[1]))
	if g := gapped.Gap; g == nil || g.After != ids[1] || g.Before != ids[3] || len(gapped.Messages) != 5 {
		t.Errorf("from a cursor history no longer holds: gap %+v, %d messages; want after %d before %d, 5", g, len(gapped.Messages), ids[1], ids[3])
	}
	if a := curlHistory(t, s.API, "id=alice"); fmt.Sprint(messageIDs(a.Messages)) != fmt.Sprint(toAlice) {
		t.Errorf("id=alice: %v, want %v", messageIDs(a.Messages), toAlice)
	}

	// The very bytes a long-poll replay from the same cursor carries.
	_, body, _ := get(t, fmt.Sprintf("http://%s/lp/reader?channels=news&since=%d", s.Listen, ids[4]))
	var replay []json.RawMessage
	json.Unmarshal([]byte(body), &replay)
	if len(replay) != 3 || string(replay[0]) != string(second.Messages[0]) || string(replay[2]) != string(last.Messages[0]) {
		t.Errorf("long-poll replay %s; history %s %s", body, second.Messages, last.Messages)
	}

	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 0, time.Minute)
	if a := curlHistory(t, s.API, "channel=news"); fmt.Sprint(messageIDs(a.Messages)) != fmt.Sprint(ids[3:]) {
		t.Errorf("after a reload: %v, want %v", messageIDs(a.Messages), ids[3:])
	}
	if st := statsCLI(t, s); st.Manager.HistoryReads != 1 {
		t.Errorf("history_reads %d after the reload, want 1 (the counter is the process's)", st.Manager.HistoryReads)
	}

	for query, want := range map[string]string{
		"":                                   "give one of ?channel=NAME or ?id=ID",
		"channel=a&id=b":                     "give one of ?channel=NAME or ?id=ID",
		"channel=" + strings.Repeat("x", 65): "bad name",
		"channel=a%20b":                      "bad name",
		"channel=a&since=9007199254740992":   "since must be a message id",
		"channel=a&since=-1":                 "since must be a message id",
		"channel=a&limit=0":                  "limit must be 1 to 10000",
		"channel=a&limit=10001":              "limit must be 1 to 10000",
	} {
		code, body, _ := get(t, "http://"+s.API+"/history?"+query)
		var e struct{ Error string }
		if code != 400 || json.Unmarshal([]byte(body), &e) != nil || !strings.HasPrefix(e.Error, want) || strings.Count(body, "\n") != 1 {
			t.Errorf("?%s: %d %q, want 400 with one line saying %q", query, code, body, want)
		}
	}
}
