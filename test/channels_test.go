package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

type channelsAnswer struct {
	Channels []struct {
		Name        string
		Subscribers int
	}
	More bool
}

func channelsOf(t *testing.T, s *testutil.Server, query string) (channelsAnswer, string) {
	t.Helper()
	code, body, _ := get(t, "http://"+s.API+"/channels?"+query)
	var a channelsAnswer
	if code != 200 || json.Unmarshal([]byte(body), &a) != nil {
		t.Fatalf("GET /channels?%s: %d %s", query, code, body)
	}
	var list []string
	for _, c := range a.Channels {
		list = append(list, fmt.Sprintf("%s:%d", c.Name, c.Subscribers))
	}
	return a, strings.Join(list, " ")
}

// GET /channels lists the live channels in name order with their
// subscribers, paged, by prefix, and the same after a reload.
func TestChannelsAPI(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"1s\""})
	load := runMegatest(t, s, "ch", "-n", "30", "-channels", "3")
	waitHeld(t, s, 30, time.Minute)
	cometGET(t, s.Listen, "/sse/solo?channels=news,sport")
	waitOnline(t, s, "solo")
	if _, got := channelsOf(t, s, ""); got != "ch-c0:10 ch-c1:10 ch-c2:10 news:1 sport:1" {
		t.Errorf("all: %q", got)
	}
	first, got := channelsOf(t, s, "prefix=ch-&limit=2")
	if got != "ch-c0:10 ch-c1:10" || !first.More {
		t.Errorf("first page: %q more %v", got, first.More)
	}
	last, got := channelsOf(t, s, "prefix=ch-&limit=2&after=ch-c1")
	if got != "ch-c2:10" || last.More {
		t.Errorf("next page: %q more %v", got, last.More)
	}
	if a, got := channelsOf(t, s, "prefix=nothing"); got != "" || a.Channels == nil {
		t.Errorf("no match: %q %v", got, a.Channels)
	}

	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 30, 2*time.Minute)
	testutil.CheckFor(t, time.Minute, func() error {
		if _, got := channelsOf(t, s, "prefix=ch-"); got != "ch-c0:10 ch-c1:10 ch-c2:10" {
			return fmt.Errorf("after the reload: %q", got)
		}
		return nil
	})
	load.stop(t, time.Minute)
	testutil.CheckFor(t, time.Minute, func() error {
		if _, got := channelsOf(t, s, "prefix=ch-"); got != "" {
			return fmt.Errorf("after megatest left: %q", got)
		}
		return nil
	})
	for query, want := range map[string]string{
		"prefix=a%20b":                     "prefix: use 1 to 64",
		"after=" + strings.Repeat("x", 65): "after: a channel name",
		"limit=0":                          "limit must be 1 to 10000",
		"limit=x":                          "limit must be 1 to 10000",
	} {
		code, body, _ := get(t, "http://"+s.API+"/channels?"+query)
		if code != 400 || !strings.Contains(body, want) || strings.Count(body, "\n") != 1 {
			t.Errorf("?%s: %d %q, want 400 saying %q", query, code, body, want)
		}
	}
}
