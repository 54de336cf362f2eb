package ledger

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// An evidence bundle's entries are each proven to be in the tree of its checkpoint, offline.
// A forged entry fails its proof even when whoever forged it re-sealed the manifest with the
// ledger's key: the checkpoint's root, which witnesses and auditors hold, does not cover it.
func TestEvidenceBundleInclusionProofs(t *testing.T) {
	s := evidenceScenario(t)
	ctx := context.Background()
	res, err := s.ExportEvidence(ctx, &ledgerv1.ExportEvidenceRequest{To: timestamppb.New(t0.Add(1000 * time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := WriteBundle(dir, res.Files); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyBundle(dir, s.PublicKey())
	if err != nil || rep.Proved == 0 || rep.Proved != rep.Entries {
		t.Fatalf("VerifyBundle = %+v, %v", rep, err)
	}
	// Every entry the answers read is there, with a proof.
	var lines []archiveEntry
	for _, l := range strings.Split(strings.TrimSpace(readFile(t, filepath.Join(dir, "entries.jsonl"))), "\n") {
		var a archiveEntry
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			t.Fatal(err)
		}
		if len(a.Proof) == 0 && res.Checkpoint.Seq > 1 {
			t.Errorf("entry %d has no proof", a.Seq)
		}
		lines = append(lines, a)
	}
	// Forge one entry (content and its leaf hash), then re-seal the bundle with the key.
	a := lines[len(lines)/2]
	e, err := a.entry()
	if err != nil {
		t.Fatal(err)
	}
	e.Actor = "mallory"
	e.Hash = leafHash(e)
	forged := archiveEntryOf(e)
	forged.Headers, forged.Proof = a.Headers, a.Proof
	var files []*ledgerv1.BundleFile
	var m Manifest
	for _, f := range res.Files {
		switch f.Name {
		case "manifest.json":
			if err := json.Unmarshal(f.Content, &m); err != nil {
				t.Fatal(err)
			}
		case "manifest.sig", "public_key.pem":
		case "entries.jsonl":
			var out []string
			for _, l := range lines {
				if l.Seq == forged.Seq {
					l = forged
				}
				b, _ := json.Marshal(l)
				out = append(out, string(b))
			}
			files = append(files, &ledgerv1.BundleFile{Name: f.Name, Content: []byte(strings.Join(out, "\n") + "\n")})
		default:
			files = append(files, f)
		}
	}
	m.Files = nil
	files, err = s.sealBundle(m, files)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := filepath.Join(t.TempDir(), "forged")
	if err := WriteBundle(dir2, files); err != nil {
		t.Fatal(err)
	}
	_, err = VerifyBundle(dir2, s.PublicKey())
	if err == nil || !strings.Contains(err.Error(), "is not in the tree of the signed checkpoint") {
		t.Fatalf("VerifyBundle of a re-sealed forged entry = %v", err)
	}
	t.Log(err)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
