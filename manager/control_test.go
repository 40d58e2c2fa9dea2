package manager

import (
	"fmt"
	"strings"
	"testing"
)

func pageOf(names ...string) []channelCount {
	var out []channelCount
	for _, n := range names {
		out = append(out, channelCount{n, 1})
	}
	return out
}

func pageString(p []channelCount, more bool) string {
	var b strings.Builder
	for _, c := range p {
		fmt.Fprintf(&b, "%s:%d ", c.Name, c.Subscribers)
	}
	return fmt.Sprintf("%smore=%v", b.String(), more)
}

// The nodes' pages merge into one in name order, counts added; a node
// that had more bounds the page at its last name, so nothing of it is
// skipped by the next page's after.
func TestMergeChannels(t *testing.T) {
	for _, c := range []struct {
		name    string
		replies []reply
		limit   int
		want    string
	}{
		{"disjoint, whole", []reply{{Channels: pageOf("a", "c")}, {Channels: pageOf("b", "d")}}, 10, "a:1 b:1 c:1 d:1 more=false"},
		{"shared names add", []reply{{Channels: pageOf("a", "b")}, {Channels: pageOf("b")}}, 10, "a:1 b:2 more=false"},
		{"cut at limit", []reply{{Channels: pageOf("a", "c")}, {Channels: pageOf("b", "d")}}, 2, "a:1 b:1 more=true"},
		// Node 1 stopped at b (it has more after): d of node 2 must wait
		// for the next page, or node 1's c would be skipped.
		{"bounded by a node with more", []reply{{Channels: pageOf("a", "b"), More: true}, {Channels: pageOf("d")}}, 2, "a:1 b:1 more=true"},
		{"bounded, under limit", []reply{{Channels: pageOf("a", "b"), More: true}, {Channels: pageOf("a", "d")}}, 5, "a:2 b:1 more=true"},
		{"none", []reply{{}, {}}, 5, "more=false"},
	} {
		if got := pageString(mergeChannels(c.replies, c.limit)); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// Member ids merge sorted and distinct; an id on two nodes counts once.
func TestMergeMembers(t *testing.T) {
	ids, members := mergeMembers([]reply{
		{IDs: []string{"alice", "carol"}, Members: 2},
		{IDs: []string{"alice", "bob"}, Members: 2},
	}, 10)
	if strings.Join(ids, ",") != "alice,bob,carol" || members != 3 {
		t.Errorf("ids %v, members %d; want alice,bob,carol and 3", ids, members)
	}
	ids, members = mergeMembers([]reply{
		{IDs: []string{"a", "b"}, Members: 5},
		{IDs: []string{"a", "c"}, Members: 2},
	}, 2)
	if strings.Join(ids, ",") != "a,b" || members != 6 {
		t.Errorf("ids %v, members %d; want the first 2 and 6 (a counted once)", ids, members)
	}
}
