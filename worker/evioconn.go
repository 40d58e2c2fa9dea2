package worker

import (
	"fmt"
	"net"
	"reflect"
	"syscall"
	"unsafe"

	"github.com/tidwall/evio"
)

// evio v1.0.8 (pinned in go.mod) gives a callback no way to learn a
// connection's fd or whether evio itself still holds unsent output for it.
// We need both: clients are written to directly from the loop (one syscall,
// no copy, no 4 KiB slice left behind per connection), and output may only
// be handed to evio while its own buffer is empty, because a wake replaces
// that buffer (upstream issue #72). Both live in unexported fields of
// *evio.conn; we read them at offsets found once by reflection and checked
// against the expected types, so a changed layout fails loudly at the first
// connection instead of corrupting memory. (One more write, evioForgetPeer,
// frees what evio keeps but never reads again.)
type evioLayout struct {
	typ     reflect.Type
	fdOff   uintptr
	outOff  uintptr
	saOff   uintptr
	addrOff uintptr
}

var layout evioLayout

// learnLayout finds the fields on the first connection the loop sees.
func learnLayout(c evio.Conn) error {
	t := reflect.TypeOf(c)
	if layout.typ == t {
		return nil
	}
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("evio conn is %v, not a pointer to a struct", t)
	}
	st := t.Elem()
	fd, ok1 := st.FieldByName("fd")
	out, ok2 := st.FieldByName("out")
	sa, ok3 := st.FieldByName("sa")
	addr, ok4 := st.FieldByName("remoteAddr")
	if !ok1 || !ok2 || !ok3 || !ok4 || fd.Type.Kind() != reflect.Int || out.Type != reflect.TypeOf([]byte(nil)) ||
		sa.Type != reflect.TypeOf((*syscall.Sockaddr)(nil)).Elem() || addr.Type != reflect.TypeOf((*net.Addr)(nil)).Elem() {
		return fmt.Errorf("evio conn %v lacks fd int, out []byte, sa syscall.Sockaddr, remoteAddr net.Addr: is evio still v1.0.8?", st)
	}
	layout = evioLayout{typ: t, fdOff: fd.Offset, outOff: out.Offset, saOff: sa.Offset, addrOff: addr.Offset}
	return nil
}

func connPtr(c evio.Conn) unsafe.Pointer { return reflect.ValueOf(c).UnsafePointer() }

// evioFD returns the connection's file descriptor.
func evioFD(c evio.Conn) int { return *(*int)(unsafe.Add(connPtr(c), layout.fdOff)) }

// evioUnsent returns how many bytes evio still has to write for c.
func evioUnsent(c evio.Conn) int { return len(*(*[]byte)(unsafe.Add(connPtr(c), layout.outOff))) }

// evioForgetPeer drops the peer address evio keeps for every connection
// (its accept sockaddr and the net.Addr made from it, 88 bytes of heap per
// connection). evio reads neither after Opened - it uses them only to make
// RemoteAddr(), which megacomet never calls - so Opened clears both. These
// are the only fields we write: typed pointer stores, so the garbage
// collector's write barriers see them.
func evioForgetPeer(c evio.Conn) {
	p := connPtr(c)
	*(*syscall.Sockaddr)(unsafe.Add(p, layout.saOff)) = nil
	*(*net.Addr)(unsafe.Add(p, layout.addrOff)) = nil
}

// evioReleaseOut drops evio's output buffer once it is empty: after writing
// a backlog evio keeps the buffer for reuse when its capacity is at most
// 4 KiB, so every connection that was ever behind (a slow reader, a
// broadcast to a starved client) would hold 4 KiB until it closed. A
// typed store, like evioForgetPeer's.
func evioReleaseOut(c evio.Conn) {
	out := (*[]byte)(unsafe.Add(connPtr(c), layout.outOff))
	if len(*out) == 0 && cap(*out) > 0 {
		*out = nil
	}
}

// unsafeOut points at evio's output slice of c (tests).
func unsafeOut(cc *conn) unsafe.Pointer { return unsafe.Add(connPtr(cc.ec), layout.outOff) }
