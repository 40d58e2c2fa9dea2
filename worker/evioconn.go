package worker

import (
	"fmt"
	"reflect"
	"unsafe"

	"github.com/tidwall/evio"
)

// evio v1.0.8 (pinned in go.mod) gives a callback no way to learn a
// connection's fd or whether evio itself still holds unsent output for it.
// We need both: clients are written to directly from the loop (one syscall,
// no copy, no 4 KiB slice left behind per connection), and output may only
// be handed to evio while its own buffer is empty, because a wake replaces
// that buffer (upstream issue #72). Both live in unexported fields of
// *evio.conn; we read them - never write them - at offsets found once by
// reflection and checked against the expected types, so a changed layout
// fails loudly at the first connection instead of corrupting memory.
type evioLayout struct {
	typ    reflect.Type
	fdOff  uintptr
	outOff uintptr
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
	if !ok1 || !ok2 || fd.Type.Kind() != reflect.Int || out.Type != reflect.TypeOf([]byte(nil)) {
		return fmt.Errorf("evio conn %v has no fd int / out []byte fields: is evio still v1.0.8?", st)
	}
	layout = evioLayout{typ: t, fdOff: fd.Offset, outOff: out.Offset}
	return nil
}

func connPtr(c evio.Conn) unsafe.Pointer { return reflect.ValueOf(c).UnsafePointer() }

// evioFD returns the connection's file descriptor.
func evioFD(c evio.Conn) int { return *(*int)(unsafe.Add(connPtr(c), layout.fdOff)) }

// evioUnsent returns how many bytes evio still has to write for c.
func evioUnsent(c evio.Conn) int { return len(*(*[]byte)(unsafe.Add(connPtr(c), layout.outOff))) }
