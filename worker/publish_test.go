package worker

import (
	"strings"
	"testing"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

// A client publish is held to the API's data limit, ipc.MaxData, measured
// as the API does (compacted), even where comet.ws_max_message lets a
// bigger message in: over it the client is told, in the frame other
// refusals use, and stays; at it, or over it only in whitespace, the
// publish goes on to the manager.
func TestWSClientPublishOverMaxData(t *testing.T) {
	h := startWorker(t, func(o *config.Options) {
		noHeartbeat(o)
		o.Comet.ClientPublish = true
		o.Comet.WSMaxMessage = 1 << 20
	})
	c := h.openWS("/ws/pub")
	h.waitJoins(1)
	str := func(n int) string { return `"` + strings.Repeat("x", n-2) + `"` } // JSON of n bytes

	c.writeAll(text(`{"publish":"room","data":` + str(ipc.MaxData+1) + `}`))
	hd, p := c.mustNext()
	if want := `{"error":"data over 262144 bytes","channel":"room"}`; hd.OpCode != ws.OpText || string(p) != want {
		t.Fatalf("over the limit: got %v %q, want %q", hd.OpCode, p, want)
	}
	c.alive()

	c.writeAll(text(`{"publish":"room","data":` + str(ipc.MaxData) + `}`))
	c.writeAll(text(`{"publish":"room","data":[` + strings.Repeat(" ", ipc.MaxData) + `1]}`))
	for _, want := range []int{ipc.MaxData, len("[1]")} {
		_, ch, data, _, err := ipc.ParsePublish(h.waitFrame(ipc.TypePublish))
		if err != nil || string(ch) != "room" || len(data) != want {
			t.Fatalf("publish frame: channel %q, %d bytes of data, %v; want room, %d bytes", ch, len(data), err, want)
		}
	}
	c.alive()
}
