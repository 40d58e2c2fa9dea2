package manager

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"text/tabwriter"
	"time"
)

// FetchStats asks the stats socket at path and returns the raw JSON.
func FetchStats(path string, timeout time.Duration) ([]byte, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("stats socket %s: is the manager running? %w", path, unwrapOp(err))
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("stats socket %s: %w", path, unwrapOp(err))
	}
	return b, nil
}

func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}

// PrintStats writes the stats JSON as a table for people.
func PrintStats(w io.Writer, raw []byte) error {
	var st Stats
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("stats: bad answer from manager: %w", err)
	}
	fmt.Fprintf(w, "megacomet manager pid %d, up %s, generation %d, rss %s, cpu %.1f%%\n",
		st.Manager.PID, (time.Duration(st.Manager.UptimeS) * time.Second).String(), st.Generation,
		bytesIEC(st.Manager.RSSBytes), st.Manager.CPUPercent)
	fmt.Fprintf(w, "clients  %s   api %s\n", st.Listen, st.API)
	fmt.Fprintf(w, "connections %d of capacity %d, refused %d; published %d, retained %d\n",
		st.Connections, st.Capacity, st.Refused, st.Manager.Published, st.Manager.Retained)
	if c := st.Cluster; c != nil {
		fmt.Fprintf(w, "cluster node %s, stream %s: NATS %s %s, last id %d, delivered %d, lag %d, publish errors %d\n",
			c.Node, c.Stream, c.State, c.Server, c.LastID, c.DeliveredID, c.Lag, c.PublishErrors)
		for _, p := range c.Nodes {
			fmt.Fprintf(w, "  peer %s: %d connections, %d ids, lag %d, heard %d ms ago\n", p.Node, p.Connections, p.IDs, p.Lag, p.HeardMs)
		}
	}
	fmt.Fprintf(w, "host load1 %.2f, memory %s used of %s\n\n",
		st.Host.Load1, bytesIEC(st.Host.MemUsedBytes), bytesIEC(st.Host.MemTotalBytes))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SLOT\tPID\tCPU\tSTATE\tCONNS\tRSS\tGO HEAP\tCPU%\tRESTARTS\tMSGS OUT\tREFUSED\tSLOW\t")
	pss := st.Manager.PSSBytes
	for _, ws := range st.Workers {
		cpu := "-"
		if ws.CPU >= 0 {
			cpu = strconv.Itoa(ws.CPU)
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%s\t%s\t%.1f\t%d\t%d\t%d\t%d\t\n",
			ws.Slot, ws.PID, cpu, ws.State, ws.Connections, bytesIEC(ws.RSSBytes), bytesIEC(ws.HeapBytes), ws.CPUPercent,
			ws.Restarts, ws.MessagesOut, ws.Refused, ws.SlowConsumers)
		pss += ws.PSSBytes
	}
	tw.Flush()
	fmt.Fprintf(w, "\nserver memory (PSS, manager + workers) %s", bytesIEC(pss))
	if st.Connections > 0 {
		fmt.Fprintf(w, ", %d bytes per connection", pss/st.Connections)
	}
	fmt.Fprintln(w)
	return nil
}

func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + "B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
