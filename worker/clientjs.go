package worker

import (
	"bytes"
	"slices"
	"strconv"

	jsclient "github.com/megacomet/megacomet/clients/js"
	"github.com/megacomet/megacomet/config"
)

// GET /megacomet.js is the browser client (clients/js), embedded, so
// <script type="module"> works with nothing to install. Every answer is
// built once: cached for a day, then revalidated with its ETag (a 304
// when it has not changed), with CORS for any origin, since a module
// script from another origin is fetched in CORS mode. The path takes the
// place of MegaComet's /ID.js for the id "megacomet" (/lp/megacomet serves
// that id).

var (
	pathClientJS                        = []byte("/megacomet.js")
	clientJSHead, clientJS, clientJS304 = clientJSAnswers()
	clientETag                          = []byte(jsclient.ETag)
	anyETag                             = []byte("*")
)

func clientJSAnswers() (head, full, notModified []byte) {
	cache := "Cache-Control: public, max-age=86400\r\nETag: " + jsclient.ETag + "\r\n" +
		"Access-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\n\r\n"
	head = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/javascript; charset=utf-8\r\n" +
		"Content-Length: " + strconv.Itoa(len(jsclient.Source)) + "\r\n" + cache)
	full = append(slices.Clip(head), jsclient.Source...)
	return head, full, []byte("HTTP/1.1 304 Not Modified\r\n" + cache)
}

func (w *Worker) serveClientJS(cc *conn, r *request, head bool) {
	switch {
	case bytes.Contains(r.ifNoneMatch, clientETag) || bytes.Equal(r.ifNoneMatch, anyETag):
		w.send(cc, clientJS304)
	case head:
		w.send(cc, clientJSHead)
	default:
		w.send(cc, clientJS)
	}
	w.afterAnswer(cc)
}

// transportNames are the transports as server.transports names them.
var transportNames = [...]string{trLP: "lp", trStream: "stream", trSSE: "sse", trWS: "ws"}

// errTransportOff answers a transport server.transports leaves out.
var errTransportOff = func() (e [len(transportNames)]*httpError) {
	for i, name := range transportNames {
		if name != "" {
			e[i] = newHTTPError(404, "Not Found", "transport "+name+" is not enabled on this server (server.transports)")
		}
	}
	return e
}()

// transportsOff marks the transports the options leave out.
func transportsOff(o *config.Options) (off [len(transportNames)]bool) {
	for i, name := range transportNames {
		off[i] = name != "" && !slices.Contains(o.Server.Transports, name)
	}
	return off
}
