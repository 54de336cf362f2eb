package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// lockRetryAfter is the hint tenure gets when another writer holds the file: edits by hand
// or by another tool take about that long.
const lockRetryAfter = time.Second

// store keeps the inventory in one JSON file, the target this connector manages. Writers
// take an advisory lock (flock on path+".lock"), so other tools that edit the file take
// turns with us, and replace the file atomically (temporary file, fsync, rename), so neither
// a reader nor a crash ever sees half a file. Readers need no lock.
type store struct {
	path string
	// mu orders this process's own writers; flock only excludes other processes.
	mu sync.Mutex
}

// inventoryFile is the file's format.
type inventoryFile struct {
	Accounts []record `json:"accounts"`
}

type record struct {
	ID           string   `json:"id"`
	Username     string   `json:"username"`
	WorkerID     string   `json:"worker_id,omitempty"`
	Email        string   `json:"email,omitempty"`
	GivenName    string   `json:"given_name,omitempty"`
	FamilyName   string   `json:"family_name,omitempty"`
	DisplayName  string   `json:"display_name,omitempty"`
	Disabled     bool     `json:"disabled"`
	Entitlements []string `json:"entitlements"`
}

// load reads the file; a missing file is an empty inventory.
func (s *store) load() (*inventoryFile, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return &inventoryFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.path, err) // unclassified: retryable
	}
	var f inventoryFile
	dec := json.NewDecoder(bytes.NewReader(data))
	// A field we do not know would be lost when we rewrite the file: refuse instead.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		// Retrying cannot repair the file; an operator must.
		return nil, connector.Permanent(fmt.Errorf("%s is not a valid inventory: %w", s.path, err))
	}
	return &f, nil
}

// update runs change on the current contents under the lock and writes the result.
func (s *store) update(change func(*inventoryFile) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lock, err := os.OpenFile(s.path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open lock: %w", err)
	}
	defer lock.Close() // closing releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			// The host owns waiting: say how long, do not sleep here.
			return connector.RetryableAfter(fmt.Errorf("%s is locked by another writer", s.path), lockRetryAfter)
		}
		return fmt.Errorf("lock %s: %w", s.path, err)
	}
	f, err := s.load()
	if err != nil {
		return err
	}
	if err := change(f); err != nil {
		return err
	}
	return s.write(f)
}

// write replaces the file atomically.
func (s *store) write(f *inventoryFile) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	defer os.Remove(tmp.Name()) // after the rename there is nothing left to remove
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	// Without the fsync a power cut after the rename can leave an empty file.
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	// The rename is durable once the directory is.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	defer d.Close()
	return d.Sync()
}
