package ipc

// MaxData bounds one message's data, wherever it enters: the publish API,
// a WebSocket client's publish, the cluster stream. It is written to every
// client the message reaches and kept for replay.
const MaxData = 256 << 10
