// Command megabench runs megacomet and megatest together on this machine
// and reports what the connections cost (make c1m, make bench, make soak);
// see bench/.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/megacomet/megacomet/bench"
)

func main() {
	o := bench.Options{Log: os.Stdout}
	fs := flag.NewFlagSet("megabench", flag.ContinueOnError)
	fs.StringVar(&o.Kind, "kind", "c1m", "the report's name: c1m, bench, soak or cluster")
	fs.StringVar(&o.Bin, "bin", "bin", "directory with the megacomet and megatest binaries")
	fs.IntVar(&o.N, "n", 1000000, "connections")
	fs.IntVar(&o.Rate, "rate", 15000, "new connections per second")
	fs.IntVar(&o.Broadcast, "broadcast", 3, "broadcast rounds")
	fs.DurationVar(&o.RoundEvery, "round-every", 0, "one broadcast round per this long (0 = back to back)")
	fs.DurationVar(&o.Hold, "hold", 30*time.Second, "how long megatest holds the connections once answered")
	fs.StringVar(&o.Transport, "transport", "sse", "sse, ws, stream or lp")
	fs.DurationVar(&o.Heartbeat, "heartbeat", 15*time.Second, "the server's comet.heartbeat")
	fs.IntVar(&o.Workers, "workers", 0, "workers (0 = enough for -n under the open-file limit)")
	fs.IntVar(&o.Pub, "pub", 0, "messages per second published to megatest's ids")
	fs.DurationVar(&o.Sample, "sample", 0, "sample every process's RSS this often while held (0 = off)")
	fs.IntVar(&o.Port, "port", 8000, "client port")
	fs.IntVar(&o.APIPort, "api-port", 9000, "API port")
	fs.StringVar(&o.Out, "out", "c1m-report.json", "where the report goes")
	fs.StringVar(&o.SysctlFile, "sysctl", "etc/sysctl.d/60-megacomet.conf", "kernel tuning applied when root, restored after (\"\" = none)")
	fs.IntVar(&o.FloorConns, "floor-conns", 5000, "connections of the loopback floor probe")
	fs.IntVar(&o.FloorRounds, "floor-rounds", 20, "rounds of the loopback floor probe")
	fs.BoolVar(&o.AuthCompare, "auth-compare", false, "then connect -n again with HS256 client tokens required: the connect rate auth costs")
	fs.BoolVar(&o.HookCompare, "hook-compare", false, "then connect -n again asking a connect hook that answers in 1 ms, and again with hooks.cache on")
	fs.IntVar(&o.ChatMembers, "chat-members", 0, "then a chat round: this many WebSocket members of one channel publishing to it (0 = none)")
	fs.IntVar(&o.ChatRate, "chat-rate", 2, "the chat round's client publishes per second")
	extra := fs.String("megatest-flags", "", "more megatest flags, space-separated")
	nodes := fs.Int("nodes", 3, "cluster: megacomet nodes sharing one NATS JetStream stream")
	rates := fs.String("rates", "10000,100000", "cluster: flood rates, publishes per second over all nodes")
	phase := fs.Duration("for", 20*time.Second, "cluster: how long each rate lasts")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if o.Kind == "cluster" {
		co := bench.ClusterOptions{Bin: o.Bin, Nodes: *nodes, N: o.N, Pub: o.Pub, Hold: o.Hold, For: *phase, Batch: 500, Out: o.Out, Log: os.Stdout}
		for _, r := range strings.Split(*rates, ",") {
			var v int
			fmt.Sscan(r, &v)
			co.Rates = append(co.Rates, v)
		}
		r, err := bench.RunCluster(co)
		finish(r, err, o.Out)
		return
	}
	o.MegatestFlags = strings.Fields(*extra)
	r, err := bench.Run(o)
	finish(r, err, o.Out)
}

// finish prints the report's table, or the error and exits 1.
func finish(r interface{ Table(io.Writer) }, err error, out string) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "megabench:", err)
		os.Exit(1)
	}
	fmt.Println()
	r.Table(os.Stdout)
	fmt.Printf("report: %s\n", out)
}
