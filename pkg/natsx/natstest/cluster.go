package natstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// Cluster is a running in-process cluster with a connection and tenure's streams.
type Cluster struct {
	Servers []*server.Server
	URL     string // every node's client URL, comma-separated (nats.Connect takes the list)
	Conn    *nats.Conn
	JS      jetstream.JetStream
}

// StartCluster starts an n-node cluster on loopback, shaped like deploy/nats/cluster.conf
// without TLS: routes between all nodes, JetStream on each with its own temp store and
// sync_interval always. It waits for a meta leader, creates tenure's streams with n replicas,
// waits until every replica is current and stops everything when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	// The routes must name every node before they start: reserve the cluster ports first.
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
		l.Close()
	}
	c := &Cluster{}
	var urls []string
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("nats-%d", i),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			SyncAlways: true,
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "tenure", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatalf("natstest: %s not ready after 10s", opts.ServerName)
		}
		c.Servers = append(c.Servers, ns)
		urls = append(urls, ns.ClientURL())
	}
	c.URL = strings.Join(urls, ",")
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if c.JS, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	c.Conn = nc

	o := natsx.DefaultStreamOptions()
	o.Replicas = n
	deadline := time.Now().Add(30 * time.Second)
	for !c.ready(o) {
		if time.Now().After(deadline) {
			t.Fatalf("natstest: %d-node cluster: no meta leader or R%d streams after 30s", n, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// ready reports whether the cluster has a meta leader and the streams exist with a leader and
// all replicas current, creating the streams once there is a leader.
func (c *Cluster) ready(o natsx.StreamOptions) bool {
	leader := false
	for _, s := range c.Servers {
		leader = leader || s.JetStreamIsLeader()
	}
	if !leader {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if natsx.EnsureStreams(ctx, c.JS, o) != nil {
		return false
	}
	for _, name := range []string{natsx.EventsStream, natsx.DLQStream} {
		st, err := c.JS.Stream(ctx, name)
		if err != nil {
			return false
		}
		cl := st.CachedInfo().Cluster
		if cl == nil || cl.Leader == "" || len(cl.Replicas) != o.Replicas-1 {
			return false
		}
		for _, r := range cl.Replicas {
			if !r.Current {
				return false
			}
		}
	}
	return true
}
