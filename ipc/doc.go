// Package ipc is the wire format between the manager and its workers: one
// Unix stream socket per worker carrying length-prefixed binary frames.
//
//	+----------------+--------+-----------------+
//	| length (4, LE) | type 1 | payload (len-1) |
//	+----------------+--------+-----------------+
//
// Parse is incremental (it returns ErrNeedMore until a whole frame is
// buffered) so either end can feed it whatever a read returned. Encoders
// append to a caller's buffer (Begin/End patch the length in place), and
// Reader decodes payloads without copying, so a worker's event loop can speak
// IPC without allocating. Frames are batches: one Presence frame carries many
// presence and replay records (presence.go) and one Deliver frame many
// messages and replays (deliver.go).
//
// This package knows the bytes, not the processes: who sends which frame and
// when is written down in manager/ and worker/.
//
// A reload hands running workers to a manager built from a newer binary,
// so the format is versioned (Version). The framing above and the Drain
// and Stop frames (type numbers and payloads) never change; every other
// frame may, with a new Version. A manager that adopts workers of another
// version only drains them (manager/handover.go).
package ipc

// Version is this build's IPC protocol version. 2: RecReplay carries a
// piece flag and a gap (deliver.go). 3: presence records per connection,
// not per worker (presence.go); TypePublish and RecAck. 4: RecReplay's
// flags byte (partial and deferred replays). 5: OpLeave records carry why
// the connection let go (OpBye, presence.go).
const Version = 5
