package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/cmd/app"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// devProcess is one run of the real `tenure dev` binary on a data directory.
type devProcess struct {
	cmd            *exec.Cmd
	stdout, stderr safeBuffer
	done           chan error
	httpAddr       string
	grpcAddr       string
	started        time.Time
}

func startDevBinary(t *testing.T, dir string, args ...string) *devProcess {
	t.Helper()
	tenure, _ := binaries(t)
	p := &devProcess{httpAddr: freeAddr(t), grpcAddr: freeAddr(t), done: make(chan error, 1)}
	p.cmd = exec.Command(tenure, append([]string{"dev", "--data-dir", dir, "--http-addr", p.httpAddr, "--grpc-addr", p.grpcAddr, "--nats-port", "-1"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(60 * time.Second):
				p.cmd.Process.Kill()
			}
		}
	})
	return p
}

// ready waits for /readyz and returns how long after the start it answered.
func (p *devProcess) ready(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	tenure, _ := binaries(t)
	eventually(t, within, "tenure dev ready", func() error {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("tenure dev exited: %v\n%s\n%s", err, p.stdout.String(), p.stderr.String())
		default:
		}
		out, err := exec.Command(tenure, "healthcheck", "--url", "http://"+p.httpAddr+"/readyz").CombinedOutput()
		if err != nil {
			return &waitErr{string(out)}
		}
		return nil
	})
	return time.Since(p.started)
}

func (p *devProcess) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	p.done <- nil
}

var postgresLine = regexp.MustCompile(`Postgres\s+(postgres://\S+)`)

// postmasterPID is the pid PostgreSQL wrote for the dev cluster (0 if none).
func postmasterPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "postgres", "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	return pid
}

// alive says pid runs (a zombie, which an init that does not reap leaves behind, does not).
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || (stat[i+2] != 'Z' && stat[i+2] != 'X')
}

// kill -9 of `tenure dev` while a leaver's disables are in flight: its PostgreSQL lives on
// (its own process group); the next start takes the cluster over and is ready within 10 s,
// and re-drives the disables at once instead of after JetStream's one-minute redelivery, so
// the leaver's accounts are verified disabled within 5 s of the restart. Then kill -9 of
// both tenure dev and its PostgreSQL: the next start recovers and is ready within 10 s.
func TestDevBinaryRecoversFromKill9(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	first := startDevBinary(t, dir)
	first.ready(t, 90*time.Second)
	m := postgresLine.FindStringSubmatch(first.stdout.String())
	if m == nil {
		t.Fatalf("no Postgres URL in the start-up output:\n%s", first.stdout.String())
	}
	dbURL := m[1]
	if !strings.Contains(first.stdout.String(), "durable (fsync on)") {
		t.Errorf("tenure dev does not say it runs durable:\n%s", first.stdout.String())
	}
	var secrets app.DevSecrets
	b, err := os.ReadFile(filepath.Join(dir, "secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &secrets); err != nil {
		t.Fatal(err)
	}
	hook := func(p *devProcess) string { return "http://" + p.httpAddr + "/webhooks/" + secrets.WebhookSource }
	worker := "w-crash-1"
	if code, res := postWebhook(t, hook(first), secrets.WebhookSecret, "hire-crash", hrEvent("hire", worker, "RN", "crash@clinic.example")); code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, first.grpcAddr, secrets.Tokens["admin"]))
	var usernames []string
	eventually(t, 30*time.Second, "four accounts verified enabled", func() error {
		r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		usernames = usernames[:0]
		for _, a := range r.Accounts {
			if a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
				return fmt.Errorf("accounts %v", r.Accounts)
			}
			usernames = append(usernames, a.Username)
		}
		if len(usernames) != 4 {
			return fmt.Errorf("accounts %v", r.Accounts)
		}
		return nil
	})

	// Hold the accounts' roles locked, so the leaver's disables wait in flight.
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	lock, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range usernames {
		var role string
		if err := admin.QueryRow(ctx, "SELECT rolname FROM pg_roles WHERE rolcanlogin AND right(rolname, length($1) + 1) = '_' || $1", u).Scan(&role); err != nil {
			t.Fatalf("role of %s: %v", u, err)
		}
		if _, err := lock.Exec(ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" CONNECTION LIMIT 7"); err != nil {
			t.Fatal(err)
		}
	}
	if code, res := postWebhook(t, hook(first), secrets.WebhookSecret, "term-crash", hrEvent("termination", worker, "", "")); code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}
	eventually(t, 30*time.Second, "the four disables in flight", func() error {
		q, err := prov.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
		if err != nil {
			return err
		}
		var n uint64
		for _, qu := range q.Queues {
			n += qu.InFlight
		}
		if n < 4 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})

	pgPID := postmasterPID(dir)
	first.kill9(t)
	lock.Rollback(ctx)
	if !alive(pgPID) {
		t.Fatalf("PostgreSQL (pid %d) died with tenure dev; this test needs it orphaned", pgPID)
	}

	second := startDevBinary(t, dir)
	readyIn := second.ready(t, 30*time.Second)
	prov = provisionerv1.NewProvisioningServiceClient(dial(t, second.grpcAddr, secrets.Tokens["admin"]))
	eventually(t, 60*time.Second, "the leaver's accounts verified disabled", func() error {
		r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		for _, a := range r.Accounts {
			if a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
				return fmt.Errorf("accounts %v", r.Accounts)
			}
		}
		return nil
	})
	verifiedIn := time.Since(second.started)
	if alive(pgPID) {
		t.Errorf("the orphaned PostgreSQL (pid %d) still runs after the restart", pgPID)
	}
	if !strings.Contains(second.stderr.String(), "left running") {
		t.Errorf("the restart did not say it stopped the orphaned PostgreSQL:\n%s", second.stderr.String())
	}
	fmt.Printf("kill -9 of tenure dev: restart → ready %.2fs, restart → leaver's accounts verified disabled %.2fs\n", readyIn.Seconds(), verifiedIn.Seconds())
	if readyIn > 10*time.Second {
		t.Errorf("restart after kill -9 took %s to be ready, want within 10s", readyIn)
	}
	if verifiedIn > 5*time.Second {
		t.Errorf("the leaver's accounts were verified %s after the restart, want within 5s", verifiedIn)
	}

	// kill -9 of both: tenure dev and its PostgreSQL.
	pgPID = postmasterPID(dir)
	second.kill9(t)
	syscall.Kill(pgPID, syscall.SIGKILL)
	third := startDevBinary(t, dir)
	readyIn = third.ready(t, 30*time.Second)
	fmt.Printf("kill -9 of tenure dev and its PostgreSQL: restart → ready %.2fs\n", readyIn.Seconds())
	if readyIn > 10*time.Second {
		t.Errorf("restart after kill -9 of both took %s to be ready, want within 10s", readyIn)
	}
	third.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-third.done; err != nil {
		t.Fatalf("tenure dev after the recoveries did not stop cleanly: %v\n%s", err, third.stderr.String())
	}
	third.done <- nil
}
