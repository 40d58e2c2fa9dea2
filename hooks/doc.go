// Package hooks asks the application (config.Hooks) whether a client may
// connect, subscribe or publish, off the worker's event loop.
//
// A worker parks the connection, hands a Call to its Caller and goes on;
// one of the Caller's goroutines (at most Concurrency at once) posts the
// call as JSON to the application over keep-alive connections and hands
// the Verdict back through the callback, which wakes the loop. A call is
// bounded by hooks.timeout, the wait for a free goroutine included. A hook
// that times out, fails, or answers anything but the documented JSON gives
// a 503 verdict: it fails closed, and the client is told to retry.
//
// The formats are in docs/PROTOCOL.md ("Hooks").
package hooks
