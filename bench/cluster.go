package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/megacomet/megacomet/internal/loopback"
	"github.com/megacomet/megacomet/internal/procfs"
	"github.com/megacomet/megacomet/manager"
)

// make cluster-bench: what nodes sharing a stream cost. A Debian
// nats-server (JetStream, file store) and Nodes megacomet nodes on
// loopback sharing one stream. First megatest holds N connections spread
// over the nodes for Hold and publishes Pub/s to its own ids through the
// first node's API: publish -> delivery latency across nodes, and lost /
// duplicates. Then, with no clients, for each rate in Rates a flood of
// publishes to ids nobody holds, in batches through the first node's API,
// for For: every node reads all of the stream and drops what it does not
// hold, so the other nodes' figures are what reading alone costs a node,
// and the first node's add what publishing costs.

// ClusterOptions are a cluster run's settings.
type ClusterOptions struct {
	Bin   string
	Nodes int
	N     int // megatest connections
	Pub   int // megatest's publishes per second
	Hold  time.Duration
	Rates []int // flood rates, publishes per second, all nodes together
	For   time.Duration
	Batch int // messages per flood request
	Out   string
	Log   io.Writer
}

// ClusterReport is cluster-report.json.
type ClusterReport struct {
	Host    string        `json:"host"`
	Date    string        `json:"date"`
	FloorUs float64       `json:"loopback_floor_us"`
	Nodes   int           `json:"nodes"`
	Phases  []PhaseReport `json:"phases"`
	// Megatest's summary, before the floods: lost and duplicates must be
	// 0; latency_ms is publish -> delivery across nodes.
	Megatest json.RawMessage `json:"megatest"`
}

// PhaseReport is one flood rate.
type PhaseReport struct {
	Offered  int        `json:"offered_per_s"`
	Accepted float64    `json:"accepted_per_s"` // acked by JetStream, all nodes' APIs together
	Refused  uint64     `json:"publish_errors"`
	PerNode  []NodeCost `json:"per_node"`
	NATSCPU  float64    `json:"nats_cpu_percent"`
	SecondsS float64    `json:"seconds"`
}

// NodeCost is what one node spent reading the stream during a phase.
type NodeCost struct {
	Node        string  `json:"node"`
	ReadPerS    float64 `json:"read_per_s"` // stream messages the node took in
	MaxLag      uint64  `json:"max_lag"`    // messages behind the stream, worst sample
	ManagerCPU  float64 `json:"manager_cpu_percent"`
	CPUPerMsgUs float64 `json:"manager_cpu_us_per_message"`
	ManagerRSS  uint64  `json:"manager_rss_bytes"`
}

type clusterNode struct {
	*server
	name string
	api  string
	port int
}

// RunCluster runs it and writes the report.
func RunCluster(o ClusterOptions) (*ClusterReport, error) {
	natsBin, err := exec.LookPath("nats-server")
	if err != nil {
		return nil, fmt.Errorf("nats-server is not installed: make deps installs Debian's")
	}
	rep := &ClusterReport{Host: host(), Date: time.Now().UTC().Format(time.RFC3339), Nodes: o.Nodes}
	if f, err := loopback.Floor(2000, 10); err == nil {
		rep.FloorUs = float64(f.Nanoseconds()) / 1000
	}
	dir, err := os.MkdirTemp("", "megabench-cluster-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	natsPort := freePort()
	nats := exec.Command(natsBin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort), "-sd", filepath.Join(dir, "js"))
	natsLog, _ := os.Create(filepath.Join(dir, "nats.log"))
	nats.Stdout, nats.Stderr = natsLog, natsLog
	if err := nats.Start(); err != nil {
		return nil, fmt.Errorf("start nats-server: %w", err)
	}
	defer func() { nats.Process.Kill(); nats.Wait() }()
	url := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	if err := waitTCP(fmt.Sprintf("127.0.0.1:%d", natsPort), 30*time.Second); err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}

	var nodes []*clusterNode
	defer func() {
		for _, n := range nodes {
			n.stop(strings.TrimSuffix(o.Out, ".json") + "-" + n.name + ".log")
		}
	}()
	for i := range o.Nodes {
		n, err := startClusterNode(o, dir, url, fmt.Sprintf("n%d", i))
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		if st := n.wait(func(st manager.Stats) bool { return allReady(st) && st.Cluster != nil && st.Cluster.StreamReady }, time.Minute); st == nil {
			return nil, fmt.Errorf("node %s did not join the cluster: see its log", n.name)
		}
	}

	var hosts []string
	for _, n := range nodes {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", n.port))
	}
	summary := filepath.Join(dir, "megatest.json")
	mt := exec.Command(filepath.Join(o.Bin, "megatest"), "c", strings.Join(hosts, ","), "-api", nodes[0].api,
		"-n", strconv.Itoa(o.N), "-pub", strconv.Itoa(o.Pub), "-hold", o.Hold.String(), "-report", "5s", "-json", summary, "-q")
	mt.Stdout, mt.Stderr = o.Log, o.Log
	fmt.Fprintf(o.Log, "cluster-bench: megatest holds %d over %d nodes for %s, %d publishes/s\n", o.N, len(nodes), o.Hold, o.Pub)
	if err := mt.Run(); err != nil {
		return nil, fmt.Errorf("megatest: %w", err)
	}
	if b, err := os.ReadFile(summary); err == nil {
		rep.Megatest = bytes.TrimSpace(b)
	}
	for _, rate := range o.Rates {
		fmt.Fprintf(o.Log, "cluster-bench: %d publishes/s through %s for %s\n", rate, nodes[0].name, o.For)
		rep.Phases = append(rep.Phases, runPhase(o, nodes, nats.Process.Pid, rate))
		// Let every node catch up before the next rate.
		for _, n := range nodes {
			n.wait(func(st manager.Stats) bool { return st.Cluster != nil && st.Cluster.Lag == 0 }, 2*time.Minute)
		}
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	return rep, os.WriteFile(o.Out, append(b, '\n'), 0o644)
}

func startClusterNode(o ClusterOptions, dir, url, name string) (*clusterNode, error) {
	d := filepath.Join(dir, name)
	os.MkdirAll(d, 0o700)
	port, apiPort := freePort(), freePort()
	cfg := fmt.Sprintf(`[server]
listen = "127.0.0.1:%d"
workers = 1
pin_cpus = false
[api]
listen = "127.0.0.1:%d"
[manager]
socket = %q
pid_file = %q
state_dir = %q
[comet]
history_ttl = "10s"
[cluster]
nats = %q
node = %q
stream = "bench"
`, port, apiPort, filepath.Join(d, "s.sock"), filepath.Join(d, "p.pid"), d, url, name)
	s := &server{dir: d, socket: filepath.Join(d, "s.sock"), logPath: filepath.Join(d, "server.log"), done: make(chan struct{})}
	if err := s.launch(o.Bin, cfg); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	return &clusterNode{server: s, name: name, api: fmt.Sprintf("127.0.0.1:%d", apiPort), port: port}, nil
}

// runPhase floods at rate for o.For and measures every node.
func runPhase(o ClusterOptions, nodes []*clusterNode, natsPID, rate int) PhaseReport {
	type snap struct {
		delivered uint64
		cpu       int64
	}
	take := func() []snap {
		out := make([]snap, len(nodes))
		for i, n := range nodes {
			if st := n.stats(); st != nil && st.Cluster != nil {
				out[i] = snap{st.Cluster.DeliveredID, procfs.CPUTicks(n.cmd.Process.Pid)}
			}
		}
		return out
	}
	var accepted, refused atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Four senders through the first node's API: batches every
	// interval, so together they offer rate messages a second.
	const senders = 4
	interval := time.Duration(float64(o.Batch) * senders / float64(rate) * float64(time.Second))
	body := floodBody(o.Batch)
	for range senders {
		wg.Add(1)
		go func(api string) {
			defer wg.Done()
			cl := &http.Client{Timeout: 30 * time.Second}
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				resp, err := cl.Post("http://"+api+"/publish", "application/json", bytes.NewReader(body))
				if err != nil {
					refused.Add(uint64(o.Batch))
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					accepted.Add(uint64(o.Batch))
				} else {
					refused.Add(uint64(o.Batch))
				}
			}
		}(nodes[0].api)
	}
	natsCPU0 := procfs.CPUTicks(natsPID)
	start, t0 := take(), time.Now()
	maxLag := make([]uint64, len(nodes))
	rss := make([]uint64, len(nodes))
	for end := t0.Add(o.For); time.Now().Before(end); time.Sleep(time.Second) {
		for i, n := range nodes {
			if st := n.stats(); st != nil && st.Cluster != nil {
				maxLag[i] = max(maxLag[i], st.Cluster.Lag)
				rss[i] = max(rss[i], st.Manager.RSSBytes)
			}
		}
	}
	close(stop)
	wg.Wait()
	end, secs := take(), time.Since(t0).Seconds()
	ph := PhaseReport{Offered: rate, Accepted: float64(accepted.Load()) / secs, Refused: refused.Load(), SecondsS: secs,
		NATSCPU: 100 * float64(procfs.CPUTicks(natsPID)-natsCPU0) / procfs.TicksPerSecond / secs}
	for i, n := range nodes {
		read := float64(end[i].delivered-start[i].delivered) / secs
		cpu := 100 * float64(end[i].cpu-start[i].cpu) / procfs.TicksPerSecond / secs
		c := NodeCost{Node: n.name, ReadPerS: read, MaxLag: maxLag[i], ManagerCPU: cpu, ManagerRSS: rss[i]}
		if read > 0 {
			c.CPUPerMsgUs = cpu / 100 * 1e6 / read
		}
		ph.PerNode = append(ph.PerNode, c)
	}
	return ph
}

// floodBody is a batch of n messages to ids nobody holds.
func floodBody(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"to":"nobody%d","data":{"n":%d,"pad":"0123456789abcdef"}}`, i%5000, i)
	}
	b.WriteByte(']')
	return b.Bytes()
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitTCP(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Table prints the report for people.
func (r *ClusterReport) Table(w io.Writer) {
	fmt.Fprintf(w, "cluster of %d nodes, loopback floor %.1f µs\n", r.Nodes, r.FloorUs)
	var mt struct {
		Connections, Lost, Duplicates, Published int64
		Latency                                  struct{ P50, P99, Max float64 } `json:"latency_ms"`
	}
	if json.Unmarshal(r.Megatest, &mt) == nil {
		fmt.Fprintf(w, "megatest %d connections over the nodes: published %d, lost %d, duplicates %d, latency p50 %.1f ms p99 %.1f ms max %.1f ms\n",
			mt.Connections, mt.Published, mt.Lost, mt.Duplicates, mt.Latency.P50, mt.Latency.P99, mt.Latency.Max)
	}
	for _, p := range r.Phases {
		fmt.Fprintf(w, "offered %d/s: accepted %.0f/s, refused %d, nats-server cpu %.0f%%\n", p.Offered, p.Accepted, p.Refused, p.NATSCPU)
		for _, c := range p.PerNode {
			fmt.Fprintf(w, "  %s: read %.0f msgs/s, max lag %d, manager cpu %.0f%% (%.1f µs/msg), rss %d MiB\n",
				c.Node, c.ReadPerS, c.MaxLag, c.ManagerCPU, c.CPUPerMsgUs, c.ManagerRSS>>20)
		}
	}
}
