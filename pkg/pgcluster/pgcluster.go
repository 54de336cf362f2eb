// Package pgcluster initialises, starts and stops a throwaway PostgreSQL cluster on a loopback
// port and a Unix socket. `tenure dev` uses it for its embedded default and tests use it
// through pgtest.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options configures a cluster.
type Options struct {
	// Dir holds the cluster: Dir/data is the data directory, Dir/postgres.log the server log.
	// An existing data directory is reused, so a dev cluster survives restarts.
	Dir string
	// Port to listen on; 0 picks a free loopback port.
	Port int
	// Durable keeps fsync on. Tests turn it off for speed; never do that with data you keep.
	Durable bool
}

// ErrInUse says that another live process holds the cluster directory.
var ErrInUse = errors.New("pgcluster: the cluster directory is in use by another process")

// Cluster is a running PostgreSQL server started by this process.
type Cluster struct {
	dir     string
	socket  string // the Unix socket's directory; "" when only TCP listens
	port    int
	bin     string
	runAs   string
	stopped bool
	lock    *os.File // flock on Dir/cluster.lock, held while this process owns the cluster
	// TookOver is the pid of a server that an earlier owner of the directory left running
	// when it died (kill -9) and that Start stopped before starting its own; 0 if none.
	TookOver int
}

// ErrNoPostgres says that no PostgreSQL server binaries were found.
var ErrNoPostgres = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; install the postgresql package or pass a database URL")

// FindBin returns the directory holding initdb and pg_ctl.
func FindBin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if _, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Prefer the newest major version.
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start initialises the cluster if needed and starts it. PostgreSQL refuses to run as root,
// so when this process is root the server runs as the "postgres" OS user.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := FindBin()
	if err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		return nil, errors.New("pgcluster: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		c.runAs = "postgres"
		if _, err := user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("running as root needs a 'postgres' OS user to run the server: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := c.chown(dir); err != nil {
		return nil, err
	}
	// The lock tells a live owner from a dead one: the kernel drops it when its holder dies,
	// however it dies, and the server (another process) never inherits it.
	if c.lock, err = lockDir(dir); err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			c.lock.Close()
		}
	}()
	if socketDirOK(dir) {
		c.socket = dir
	}
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		out, err := c.run(ctx, "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
		if err != nil {
			return nil, fmt.Errorf("initdb: %w: %s", err, out)
		}
	}
	if c.TookOver, err = c.stopOrphan(ctx, data); err != nil {
		return nil, err
	}
	port := opts.Port
	for attempt := 0; ; attempt++ {
		if opts.Port == 0 {
			if port, err = freePort(); err != nil {
				return nil, err
			}
		}
		settings := []string{
			"-c listen_addresses=127.0.0.1",
			"-p " + strconv.Itoa(port),
			"-c unix_socket_directories=" + shellQuote(c.socket),
			"-c max_connections=200",
		}
		if !opts.Durable {
			settings = append(settings, "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")
		}
		out, err := c.run(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "postgres.log"), "-w", "-t", "60",
			"-o", strings.Join(settings, " "), "start")
		if err == nil {
			break
		}
		if opts.Port != 0 || attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			return nil, fmt.Errorf("pg_ctl start: %w: %s\n%s", err, out, tail(string(log), 1500))
		}
	}
	c.port = port
	started = true
	return c, nil
}

// stopOrphan stops a server still running on data although no live process owns the
// directory (we hold its lock): its owner died without stopping it. A fast shutdown ends
// its sessions and leaves the cluster clean, so the start that follows needs no recovery.
// A pid file whose process is gone, a zombie, or not this data directory's postmaster (its
// pid reused) is stale: it is removed, since PostgreSQL would take a live pid for a server.
func (c *Cluster) stopOrphan(ctx context.Context, data string) (int, error) {
	pidFile := filepath.Join(data, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if pid <= 0 || !isPostmaster(pid, data) {
		if err := os.Remove(pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("remove the stale %s: %w", pidFile, err)
		}
		return 0, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := c.run(sctx, "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop"); err != nil {
		return 0, fmt.Errorf("stop the PostgreSQL server (pid %d) an earlier owner of %s left running: %w: %s", pid, data, err, out)
	}
	// pg_ctl returns once the pid file is gone, a moment before the process has exited and
	// let go of the shared memory the new server checks.
	for deadline := time.Now().Add(10 * time.Second); isPostmaster(pid, data) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	return pid, nil
}

// Port is the loopback TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// Dir is the directory holding the cluster.
func (c *Cluster) Dir() string { return c.dir }

// URL returns a connection URL for the superuser "postgres" and the given database: through
// the Unix socket when there is one (a local round trip costs the kernel about half what
// loopback TCP does, and a mass termination makes tens of round trips per leaver), else
// through the loopback port. The port stays open for tools that only speak TCP.
func (c *Cluster) URL(database string) string {
	if c.socket != "" {
		// The directory unescaped, so the URL stays readable (socketDirOK keeps out what
		// would need escaping).
		return fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d&sslmode=disable", database, c.socket, c.port)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, database)
}

// socketDirOK says whether dir can hold the server's Unix socket: its path must fit a
// socket address (107 bytes on Linux, with "/.s.PGSQL.<port>"), pass pg_ctl's shell in
// single quotes and stand unescaped in a URL's query.
func socketDirOK(dir string) bool {
	return len(dir)+len("/.s.PGSQL.65535") <= 107 && !strings.ContainsAny(dir, " '\"\\$`&#?%+=")
}

// shellQuote quotes a setting's value for pg_ctl -o, which passes it through a shell.
func shellQuote(s string) string { return "'" + s + "'" }

// Stop shuts the server down ("fast" mode: active sessions are cancelled).
func (c *Cluster) Stop() error {
	if c == nil || c.stopped {
		return nil
	}
	c.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := c.run(ctx, "pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "fast", "-w", "stop")
	c.lock.Close()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return nil
}

func (c *Cluster) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	path := filepath.Join(c.bin, tool)
	var cmd *exec.Cmd
	if c.runAs != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = c.dir
	// Detach from our process group so a Ctrl-C to `tenure dev` lets us stop the server
	// in order instead of the terminal killing it first.
	cmd.SysProcAttr = detached()
	return cmd.CombinedOutput()
}

// chown hands the cluster directory to the server user when running as root, and makes its
// parents traversable so that user can reach it.
func (c *Cluster) chown(dir string) error {
	if c.runAs == "" {
		return nil
	}
	u, err := user.Lookup(c.runAs)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("chown %s to %s: %w", dir, c.runAs, err)
	}
	// The server user must be able to reach the directory.
	for p := filepath.Dir(dir); p != "/" && p != "."; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o711); err != nil {
				return fmt.Errorf("make %s traversable for %s: %w", p, c.runAs, err)
			}
		}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
