package e2e

// A fresh clone: `make test` sets itself up (scripts/deps.sh), no build output is committed,
// and `make build` stamps the version.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// deps.sh, on a machine missing every package and unable to install (not root, no sudo),
// stops with exit 1 and the one command that installs them.
func TestDepsScriptPrintsTheInstallCommandWhenItCannotInstall(t *testing.T) {
	root := repoRoot(t)
	cmd := exec.Command(filepath.Join(root, "scripts", "deps.sh"))
	cmd.Env = append(os.Environ(), "TENURE_DEPS_PATH="+t.TempDir(), "TENURE_DEPS_PGLIB="+t.TempDir(), "TENURE_DEPS_INSTALL=never")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("deps.sh with nothing installed: got %v, want exit 1\n%s", err, stderr.String())
	}
	want := "sudo sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql slapd ldap-utils nodejs npm util-linux git'"
	if !strings.Contains(stderr.String(), want) {
		t.Fatalf("deps.sh does not print the install command %q:\n%s", want, stderr.String())
	}
}

// With every program present (this machine's, seen through a PATH of symlinks), deps.sh
// succeeds without installing anything, and does so again: it is idempotent.
func TestDepsScriptIsSatisfiedByInstalledPrograms(t *testing.T) {
	root := repoRoot(t)
	bin := t.TempDir()
	for _, p := range []string{"slapd", "ldapsearch", "node", "npm", "runuser", "git", "initdb", "pg_ctl"} {
		real, err := exec.LookPath(p)
		if err != nil {
			for _, dir := range append([]string{"/usr/sbin"}, globOr("/usr/lib/postgresql/*/bin")...) {
				if _, serr := os.Stat(filepath.Join(dir, p)); serr == nil {
					real, err = filepath.Join(dir, p), nil
					break
				}
			}
		}
		if err != nil {
			t.Fatalf("%s is not installed here: run scripts/deps.sh", p)
		}
		if err := os.Symlink(real, filepath.Join(bin, p)); err != nil {
			t.Fatal(err)
		}
	}
	for run := 1; run <= 2; run++ {
		cmd := exec.Command(filepath.Join(root, "scripts", "deps.sh"))
		// npm itself needs node and a shell on its PATH.
		cmd.Env = append(os.Environ(), "TENURE_DEPS_PATH="+bin+":/bin:/usr/bin", "TENURE_DEPS_PGLIB="+t.TempDir(), "TENURE_DEPS_INSTALL=never")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("run %d: deps.sh with everything present: %v\n%s", run, err, out)
		}
		if strings.Contains(string(out), "installing") {
			t.Fatalf("run %d: deps.sh installed something although all was present:\n%s", run, out)
		}
	}
}

func globOr(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	return m
}

// `make test` runs deps.sh before anything else, and .ci/run only calls `make test`.
func TestMakeTestSetsItselfUp(t *testing.T) {
	root := repoRoot(t)
	out, err := exec.Command("make", "-C", root, "-n", "--no-print-directory", "test").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n test: %v\n%s", err, out)
	}
	first := strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	if !strings.Contains(first, "scripts/deps.sh") {
		t.Fatalf("make test's first step is %q, want scripts/deps.sh", first)
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(ci), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, bad := range []string{"apt-get", "npm ", "go mod", "go install"} {
			if strings.Contains(line, bad) {
				t.Errorf(".ci/run does its own setup (%q) instead of leaving it to make test: %s", bad, line)
			}
		}
	}
}

// No compiled program is committed, and the ones the build makes are ignored.
func TestNoBuildOutputIsCommitted(t *testing.T) {
	root := repoRoot(t)
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git: %v", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		b := make([]byte, 4)
		fh, err := os.Open(filepath.Join(root, f))
		if err != nil {
			continue // deleted in the work tree
		}
		n, _ := fh.Read(b)
		fh.Close()
		if n == 4 && string(b) == "\x7fELF" {
			t.Errorf("%s is a compiled binary committed to the repository", f)
		}
	}
	for _, f := range []string{"bin/tenure", "examples/connector-inventory/connector-inventory"} {
		if err := exec.Command("git", "-C", root, "check-ignore", "-q", f).Run(); err != nil {
			t.Errorf("%s (a build output) is not in .gitignore", f)
		}
	}
}

// `make build` stamps `tenure version` with the commit (git describe).
func TestMakeBuildStampsVersion(t *testing.T) {
	root := repoRoot(t)
	want, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatalf("git: %v", err)
	}
	bin := t.TempDir()
	if out, err := exec.Command("make", "-C", root, "--no-print-directory", "build", "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	got, err := exec.Command(filepath.Join(bin, "tenure"), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != "tenure "+strings.TrimSpace(string(want)) {
		t.Fatalf("tenure version = %q, want %q", strings.TrimSpace(string(got)), "tenure "+strings.TrimSpace(string(want)))
	}
}
