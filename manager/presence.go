package manager

import "slices"

// linkID identifies one worker process's IPC link while it lives. Slots
// are reused by new processes; link ids are not reused until the old
// process's presence has been swept.
type linkID uint16

// presence maps a client id or channel to the worker links holding it.
// Almost every name lives on one worker, so that case is a map of uint16;
// names on several workers move to a second map. At a million ids this
// costs tens of bytes each in the manager.
type presence struct {
	one  map[string]linkID
	many map[string][]linkID
}

func newPresence() presence {
	return presence{one: make(map[string]linkID), many: make(map[string][]linkID)}
}

func (p *presence) len() int { return len(p.one) + len(p.many) }

// add records that link holds name; name is copied only when new.
func (p *presence) add(name []byte, l linkID) {
	if ls, ok := p.many[string(name)]; ok {
		if !slices.Contains(ls, l) {
			p.many[string(name)] = append(ls, l)
		}
		return
	}
	if cur, ok := p.one[string(name)]; ok {
		if cur != l {
			delete(p.one, string(name))
			p.many[string(name)] = []linkID{cur, l}
		}
		return
	}
	p.one[string(name)] = l
}

// remove records that link no longer holds name.
func (p *presence) remove(name []byte, l linkID) {
	if cur, ok := p.one[string(name)]; ok {
		if cur == l {
			delete(p.one, string(name))
		}
		return
	}
	ls, ok := p.many[string(name)]
	if !ok {
		return
	}
	ls = slices.DeleteFunc(ls, func(x linkID) bool { return x == l })
	switch len(ls) {
	case 0:
		delete(p.many, string(name))
	case 1:
		delete(p.many, string(name))
		p.one[string(name)] = ls[0]
	default:
		p.many[string(name)] = ls
	}
}

// each calls fn for every link holding name.
func (p *presence) each(name string, fn func(linkID)) {
	if l, ok := p.one[name]; ok {
		fn(l)
		return
	}
	for _, l := range p.many[name] {
		fn(l)
	}
}

// dropLink forgets everything link held (its process is gone).
func (p *presence) dropLink(l linkID) {
	for name, cur := range p.one {
		if cur == l {
			delete(p.one, name)
		}
	}
	for name := range p.many {
		p.remove([]byte(name), l)
	}
}

// names lists what link holds.
func (p *presence) names(l linkID) []string {
	var out []string
	for name, cur := range p.one {
		if cur == l {
			out = append(out, name)
		}
	}
	for name, ls := range p.many {
		if slices.Contains(ls, l) {
			out = append(out, name)
		}
	}
	return out
}
