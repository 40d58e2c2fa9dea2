package ipc

import "github.com/megacomet/megacomet/config"

// WorkerConfig is the first IPC frame a worker receives (TypeConfig, as
// JSON): who it is and the manager's validated options.
type WorkerConfig struct {
	Slot       int            `json:"slot"`
	Generation uint64         `json:"generation"`
	CPU        int            `json:"cpu"`    // -1 = not pinned
	Listen     string         `json:"listen"` // host:port, port already resolved
	Options    config.Options `json:"options"`
	// LastID is the newest message id the manager had issued when it
	// started the worker, and IDClockUs its id clock (microseconds) less
	// the real one: a connection without a cursor starts from the newest
	// id that can have been issued, whatever the worker's clock says.
	LastID    uint64 `json:"last_id"`
	IDClockUs int64  `json:"id_clock_us"`
	// SeqIDs: ids are a cluster stream's sequence, not a clock; such a
	// connection starts from the newest id the worker has seen (the
	// manager tells every worker of each new one).
	SeqIDs bool `json:"seq_ids,omitempty"`
	// Bans and Revocations in force (POST /disconnect, /revoke), so the
	// worker refuses what it must from its first connection; later ones
	// come as frames.
	Bans        []Disconnect `json:"bans,omitempty"`
	Revocations []Revoke     `json:"revocations,omitempty"`
}

// WorkerFD is the descriptor a worker finds its IPC socket on.
const WorkerFD = 3
