// Package cluster is a megacomet node's link to the others: one NATS
// connection, held by the manager (workers never talk to NATS), to one
// JetStream stream that every node shares.
//
// Data flows like this. A publish accepted by any node's API goes into the
// stream (Publish), on a subject per target kind:
//
//	STREAM.id.ID     a message to one client id
//	STREAM.ids       a message to several ids (header Megacomet-To: a,b,c)
//	STREAM.ch.NAME   a channel message
//	STREAM.all       a broadcast
//
// and is answered once JetStream has acked it. The stream keeps
// comet.history_ttl of messages (MaxAge) and comet.history_size per
// subject, so it is the history every node replays from. Every node reads
// the whole stream in order through an ordered consumer (Consume) and hands
// each batch to its hub, which keeps it for replay and routes it to the
// workers holding its targets, exactly as a local publish does alone: what
// a node does not hold costs it one message decoded and dropped. Subjects
// per held id were the other choice; a node holds up to a million ids and
// a consumer's filter is not meant to change a thousand times a second.
//
// Message ids are the stream's sequence numbers moved by a fixed base:
// id = base + sequence, the base written in the stream's description when
// the first node creates it (the microsecond clock then, and above any id
// that node issued alone). So ids only grow, are the same on every node,
// and a cursor from one node is good on any other; the gap announcements
// keep their meaning. (nats-server 2.9, Debian's, ignores a stream's
// first_seq, which would have made the base unnecessary.)
//
// When NATS is unreachable, publishes fail at once with ErrUnavailable
// (the API answers 503 and says why); the ordered consumer recreates
// itself from the last sequence it delivered once NATS is back, so nothing
// published in between is missed, and nothing is delivered twice.
package cluster
