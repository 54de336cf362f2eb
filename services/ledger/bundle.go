package ledger

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// Bundle formats.
const (
	EvidenceFormat = "tenure.evidence.v1"
	ArchiveFormat  = "tenure.archive.v1"
)

// manifestTag prefixes the signed manifest bytes, so a manifest signature can never be
// mistaken for a checkpoint signature.
const manifestTag = "tenure.ledger.manifest.v1\n"

// Manifest describes a bundle: every file with its SHA-256, the checkpoint the contents are
// tied to, and the key that signed it. manifest.sig is the base64 Ed25519 signature of
// "tenure.ledger.manifest.v1\n" followed by the bytes of manifest.json.
type Manifest struct {
	Format     string     `json:"format"`
	CreatedAt  string     `json:"created_at"`
	From       string     `json:"from,omitempty"`
	To         string     `json:"to,omitempty"`
	Workers    []string   `json:"workers,omitempty"`
	Sample     int32      `json:"sample,omitempty"`
	KeyID      string     `json:"key_id"`
	Checkpoint ManifestCP `json:"checkpoint"`
	FirstSeq   int64      `json:"first_seq,omitempty"`
	LastSeq    int64      `json:"last_seq,omitempty"`
	// Archive only: the compact range (hex hashes) of the tree's leaves before first_seq, and
	// the last entry of the legacy hash chain (entries up to it are chained, see tree.go).
	PrefixRange   []string       `json:"prefix_range,omitempty"`
	LegacyThrough int64          `json:"legacy_through,omitempty"`
	Files         []ManifestFile `json:"files"`
}

// ManifestCP is a signed checkpoint in a manifest.
type ManifestCP struct {
	Seq       int64  `json:"seq"`
	HeadHash  string `json:"head_hash"` // hex
	SignedAt  string `json:"signed_at"` // RFC 3339, nanoseconds
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"` // base64
	// Note is the C2SP tlog-checkpoint signed note (seq: tree size, head_hash: root); empty
	// for a legacy chain checkpoint.
	Note string `json:"note,omitempty"`
}

// ManifestFile is one file of a bundle.
type ManifestFile struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Bytes  int    `json:"bytes"`
}

func manifestCP(c *ledgerv1.Checkpoint) ManifestCP {
	return ManifestCP{Seq: c.Seq, HeadHash: hex.EncodeToString(c.HeadHash), SignedAt: c.SignedAt.AsTime().UTC().Format(time.RFC3339Nano),
		KeyID: c.KeyId, Signature: base64.StdEncoding.EncodeToString(c.Signature), Note: c.Note}
}

func (m ManifestCP) checkpoint() (*ledgerv1.Checkpoint, error) {
	h, err := hex.DecodeString(m.HeadHash)
	if err != nil {
		return nil, fmt.Errorf("checkpoint head_hash: %w", err)
	}
	sig, err := base64.StdEncoding.DecodeString(m.Signature)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signature: %w", err)
	}
	at, err := time.Parse(time.RFC3339Nano, m.SignedAt)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signed_at: %w", err)
	}
	return &ledgerv1.Checkpoint{Seq: m.Seq, HeadHash: h, SignedAt: timestamppb.New(at), KeyId: m.KeyID, Signature: sig, Note: m.Note}, nil
}

// sealBundle adds public_key.pem, manifest.json and manifest.sig to files.
func (s *Service) sealBundle(m Manifest, files []*ledgerv1.BundleFile) ([]*ledgerv1.BundleFile, error) {
	files = append(files, &ledgerv1.BundleFile{Name: "public_key.pem", Content: []byte(PublicKeyPEM(s.PublicKey()))})
	m.KeyID = KeyID(s.PublicKey())
	for _, f := range files {
		sum := sha256.Sum256(f.Content)
		m.Files = append(m.Files, ManifestFile{Name: f.Name, SHA256: hex.EncodeToString(sum[:]), Bytes: len(f.Content)})
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	sig := ed25519.Sign(s.key, append([]byte(manifestTag), b...))
	return append(files,
		&ledgerv1.BundleFile{Name: "manifest.json", Content: b},
		&ledgerv1.BundleFile{Name: "manifest.sig", Content: []byte(base64.StdEncoding.EncodeToString(sig) + "\n")},
	), nil
}

// anchor signs a checkpoint of the current head when one is due and returns the newest.
func (s *Service) anchor(ctx context.Context) (*ledgerv1.Checkpoint, error) {
	if _, err := s.Checkpoint(ctx); err != nil {
		if errors.Is(err, ErrInconsistent) {
			return nil, status.Errorf(codes.FailedPrecondition, "%v: evidence is not exported until an operator acts (docs/ledger.md)", err)
		}
		return nil, err
	}
	var (
		c  ledgerv1.Checkpoint
		at time.Time
	)
	err := s.pool.QueryRow(ctx, "SELECT seq, head_hash, signed_at, key_id, signature, coalesce(note, '') FROM checkpoints ORDER BY seq DESC LIMIT 1").Scan(&c.Seq, &c.HeadHash, &at, &c.KeyId, &c.Signature, &c.Note)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Error(codes.FailedPrecondition, "the ledger has no signed checkpoint yet (is it empty?)")
	}
	if err != nil {
		return nil, err
	}
	c.SignedAt = timestamppb.New(at)
	return &c, nil
}

// ExportEvidence answers every question over the period, up to the newest checkpoint, and
// returns the signed bundle.
func (s *Service) ExportEvidence(ctx context.Context, req *ledgerv1.ExportEvidenceRequest) (*ledgerv1.ExportEvidenceResponse, error) {
	now := time.Now().UTC()
	sc, err := scopeOf(req.GetFrom(), req.GetTo(), req.GetWorkerIds(), req.GetSample(), now)
	if err != nil {
		return nil, err
	}
	cp, err := s.anchor(ctx)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, s.internal(ctx, "export evidence", err)
	}
	sc.maxSeq = cp.Seq
	tables, _, cited, err := s.evidenceTables(ctx, sc, Questions)
	if err != nil {
		return nil, s.internal(ctx, "export evidence", err)
	}
	proved, legacy, err := s.provedEntries(ctx, cited, cp)
	if err != nil {
		return nil, s.internal(ctx, "export evidence", err)
	}
	var files []*ledgerv1.BundleFile
	var answers []*ledgerv1.EvidenceResponse
	for _, q := range Questions {
		res := tableResponse(q, tables[q], cp.Seq)
		answers = append(answers, res)
		var c bytes.Buffer
		if err := WriteCSV(&c, res); err != nil {
			return nil, s.internal(ctx, "export evidence", err)
		}
		j, err := EvidenceJSON(res)
		if err != nil {
			return nil, s.internal(ctx, "export evidence", err)
		}
		files = append(files, &ledgerv1.BundleFile{Name: q + ".csv", Content: c.Bytes()}, &ledgerv1.BundleFile{Name: q + ".json", Content: j})
	}
	files = append(files, &ledgerv1.BundleFile{Name: "entries.jsonl", Content: proved})
	m := Manifest{Format: EvidenceFormat, CreatedAt: now.Format(time.RFC3339Nano), To: sc.to.UTC().Format(time.RFC3339Nano),
		Workers: req.GetWorkerIds(), Sample: req.GetSample(), Checkpoint: manifestCP(cp), LegacyThrough: legacy}
	if !sc.from.IsZero() {
		m.From = sc.from.UTC().Format(time.RFC3339Nano)
	}
	var html bytes.Buffer
	if err := reportTemplate.Execute(&html, reportData{M: m, KeyID: KeyID(s.PublicKey()), Answers: answers}); err != nil {
		return nil, s.internal(ctx, "export evidence", err)
	}
	files = append(files, &ledgerv1.BundleFile{Name: "report.html", Content: html.Bytes()})
	files, err = s.sealBundle(m, files)
	if err != nil {
		return nil, s.internal(ctx, "export evidence", err)
	}
	return &ledgerv1.ExportEvidenceResponse{Files: files, Checkpoint: cp}, nil
}

// provedEntries is entries.jsonl of an evidence bundle: every entry the answers were
// computed from, each with its inclusion proof in the tree of the bundle's checkpoint.
func (s *Service) provedEntries(ctx context.Context, seqs []int64, cp *ledgerv1.Checkpoint) ([]byte, int64, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var legacy int64
	if err := tx.QueryRow(ctx, "SELECT through_seq FROM legacy").Scan(&legacy); err != nil {
		return nil, 0, err
	}
	var st *nodeStore
	if cp.Note != "" {
		// Every leaf of the checkpoint's tree, to build the proofs from: the pruned ones as
		// their compact range.
		var (
			upTo int64
			pr   []byte
		)
		if err := tx.QueryRow(ctx, "SELECT up_to_seq, tree_range FROM prunes ORDER BY up_to_seq DESC LIMIT 1").Scan(&upTo, &pr); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, 0, err
		}
		prefix, err := decodeRange(upTo, pr)
		if err != nil || (upTo > 0 && pr == nil) {
			return nil, 0, fmt.Errorf("the pruned entries 1..%d have no usable tree range: cannot prove inclusion", upTo)
		}
		rows, err := tx.Query(ctx, "SELECT hash FROM entries WHERE seq > $1 AND seq <= $2 ORDER BY seq", upTo, cp.Seq)
		if err != nil {
			return nil, 0, err
		}
		leaves := make([][]byte, 0, cp.Seq-upTo)
		for rows.Next() {
			var h []byte
			if err := rows.Scan(&h); err != nil {
				rows.Close()
				return nil, 0, err
			}
			leaves = append(leaves, h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, 0, err
		}
		if int64(len(leaves)) != cp.Seq-upTo {
			return nil, 0, fmt.Errorf("the tree of checkpoint %d has %d of its entries %d..%d in the database: cannot prove inclusion", cp.Seq, len(leaves), upTo+1, cp.Seq)
		}
		if st, err = newNodeStoreFrom(prefix, leaves); err != nil {
			return nil, 0, err
		}
		if got, err := st.root(); err != nil || !bytes.Equal(got, cp.HeadHash) {
			return nil, 0, fmt.Errorf("the database's tree of %d entries does not match checkpoint %d (run tenurectl ledger verify)", cp.Seq, cp.Seq)
		}
	}
	rows, err := tx.Query(ctx, entrySelect+" WHERE seq = ANY($1) ORDER BY seq", seqs)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for rows.Next() {
		e, hdr, err := scanEntry(rows)
		if err != nil {
			return nil, 0, err
		}
		a := archiveEntryOf(&e)
		if err := json.Unmarshal(hdr, &a.Headers); err != nil {
			return nil, 0, fmt.Errorf("entry %d headers: %w", e.Seq, err)
		}
		if st != nil {
			p, err := st.inclusion(e.Seq, cp.Seq)
			if err != nil {
				return nil, 0, fmt.Errorf("entry %d: %w", e.Seq, err)
			}
			for _, h := range p {
				a.Proof = append(a.Proof, hex.EncodeToString(h))
			}
		}
		if err := enc.Encode(&a); err != nil {
			return nil, 0, err
		}
	}
	return buf.Bytes(), legacy, rows.Err()
}

func archiveEntryOf(e *entry) archiveEntry {
	return archiveEntry{Seq: e.Seq, MsgID: e.MsgID, Subject: e.Subject, Type: e.Type, Source: e.Source, WorkerID: e.WorkerID, System: e.System,
		Actor: e.Actor, EventTime: e.EventTime.Format(time.RFC3339Nano), RecordedAt: e.RecordedAt.Format(time.RFC3339Nano), StreamSeq: e.StreamSeq,
		TraceID: e.TraceID, Payload: e.Payload, PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash)}
}

// verifyProofs checks an evidence bundle's entries.jsonl offline: each entry's hash against
// its content, and its inclusion proof against the signed checkpoint.
func verifyProofs(path string, cp *ledgerv1.Checkpoint, m *Manifest, rep *BundleReport) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		var a archiveEntry
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return fmt.Errorf("entries.jsonl line %d: %w", rep.Entries+1, err)
		}
		e, err := a.entry()
		if err != nil {
			return fmt.Errorf("entry %d: %w", a.Seq, err)
		}
		if err := checkEntryHash(e, nil, m.LegacyThrough); err != nil {
			return err
		}
		if cp.Note == "" {
			rep.Entries++
			continue // a legacy checkpoint: no tree to prove against
		}
		p := make([][]byte, len(a.Proof))
		for i, h := range a.Proof {
			if p[i], err = hex.DecodeString(h); err != nil {
				return fmt.Errorf("entry %d: proof: %w", e.Seq, err)
			}
		}
		if err := VerifyInclusion(e.Seq, cp.Seq, e.Hash, p, cp.HeadHash); err != nil {
			why := err.Error()
			var mismatch proof.RootMismatchError
			if errors.As(err, &mismatch) {
				why = fmt.Sprintf("its inclusion proof leads to root %s", short(mismatch.CalculatedRoot))
			}
			return fmt.Errorf("entry %d is not in the tree of the signed checkpoint (%d entries, root %s): %s", e.Seq, cp.Seq, short(cp.HeadHash), why)
		}
		rep.Entries++
		rep.Proved++
	}
	return sc.Err()
}

// WriteCSV writes an answer as CSV with a header row. Cells that a spreadsheet would take
// for a formula (=, +, -, @ first) are prefixed with a single quote.
func WriteCSV(w io.Writer, res *ledgerv1.EvidenceResponse) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(res.GetColumns()); err != nil {
		return err
	}
	for _, r := range res.GetRows() {
		cells := slices.Clone(r.GetCells())
		for i, c := range cells {
			if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
				cells[i] = "'" + c
			}
		}
		if err := cw.Write(cells); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// EvidenceJSON renders an answer as {"question", "title", "head_seq", "columns", "rows":
// [{column: cell}]}.
func EvidenceJSON(res *ledgerv1.EvidenceResponse) ([]byte, error) {
	rows := make([]map[string]string, 0, len(res.GetRows()))
	for _, r := range res.GetRows() {
		m := make(map[string]string, len(res.GetColumns()))
		for i, c := range res.GetColumns() {
			if i < len(r.GetCells()) {
				m[c] = r.GetCells()[i]
			}
		}
		rows = append(rows, m)
	}
	b, err := json.MarshalIndent(map[string]any{"question": res.GetQuestion(), "title": res.GetTitle(), "head_seq": res.GetHeadSeq(),
		"columns": res.GetColumns(), "rows": rows}, "", "  ")
	return append(b, '\n'), err
}

type reportData struct {
	M       Manifest
	KeyID   string
	Answers []*ledgerv1.EvidenceResponse
}

var reportTemplate = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tenure evidence report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0 2em;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eee} h2{margin-top:2em} .meta td:first-child{font-weight:bold}
.empty{color:#777;font-style:italic}
</style></head><body>
<h1>Workforce access evidence</h1>
<p>HIPAA Security Rule: 45 CFR 164.308(a)(3) workforce security, 164.308(a)(4) information access management,
164.312(b) audit controls. Every answer below is derived from tenure's hash-chained audit ledger.</p>
<table class="meta">
<tr><td>Period</td><td>{{if .M.From}}{{.M.From}}{{else}}beginning of the ledger{{end}} to {{.M.To}}</td></tr>
<tr><td>Generated</td><td>{{.M.CreatedAt}}</td></tr>
{{if .M.Workers}}<tr><td>Workers</td><td>{{range .M.Workers}}{{.}} {{end}}</td></tr>{{end}}
{{if .M.Sample}}<tr><td>Sample</td><td>{{.M.Sample}} workers chosen at random per question</td></tr>{{end}}
<tr><td>Ledger checkpoint</td><td>entry {{.M.Checkpoint.Seq}}, hash {{.M.Checkpoint.HeadHash}}, signed {{.M.Checkpoint.SignedAt}}</td></tr>
<tr><td>Signing key</td><td>{{.KeyID}} (public_key.pem)</td></tr>
</table>
<p>To check this bundle: <code>tenurectl evidence verify DIR --pubkey KEY.pem</code>, with the ledger's public key obtained
independently (<code>tenurectl ledger pubkey</code>). It checks every file against manifest.json and the Ed25519
signatures of the manifest and of the checkpoint.</p>
{{range .Answers}}
<h2>{{.Title}}</h2>
{{if .Rows}}<table><tr>{{range .Columns}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>{{else}}<p class="empty">Nothing recorded for this question in the period.</p>{{end}}
{{end}}
</body></html>
`))

// BundleReport is what VerifyBundle found.
type BundleReport struct {
	Manifest Manifest
	KeyID    string
	Files    int
	// Archive only: the segment's entries, the prev_hash of its first entry, and the
	// compact range of the tree through its last entry.
	Entries   int64
	FirstPrev []byte
	Range     *compact.Range
	// Evidence only: entries whose inclusion proof was checked.
	Proved int64
}

// VerifyBundle checks an evidence bundle or archive directory without a server: the
// manifest's signature with the bundle's public key (which must equal trusted, when given),
// every file's size and SHA-256, that no file was added, the checkpoint's signature, and for
// an archive, the chain segment against the checkpoint.
func VerifyBundle(dir string, trusted ed25519.PublicKey) (*BundleReport, error) {
	mb, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	sb, err := os.ReadFile(filepath.Join(dir, "manifest.sig"))
	if err != nil {
		return nil, err
	}
	pb, err := os.ReadFile(filepath.Join(dir, "public_key.pem"))
	if err != nil {
		return nil, err
	}
	pub, err := ParsePublicKeyPEM(pb)
	if err != nil {
		return nil, fmt.Errorf("public_key.pem: %w", err)
	}
	if trusted != nil && !trusted.Equal(pub) {
		return nil, fmt.Errorf("the bundle is signed by key %s, not by the trusted key %s", KeyID(pub), KeyID(trusted))
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sb)))
	if err != nil {
		return nil, fmt.Errorf("manifest.sig: %w", err)
	}
	if !ed25519.Verify(pub, append([]byte(manifestTag), mb...), sig) {
		return nil, errors.New("manifest.sig: the signature of manifest.json does not verify: the manifest was changed or signed by another key")
	}
	var m Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	if m.KeyID != KeyID(pub) {
		return nil, fmt.Errorf("manifest names key %s but public_key.pem is %s", m.KeyID, KeyID(pub))
	}
	listed := map[string]bool{"manifest.json": true, "manifest.sig": true}
	for _, f := range m.Files {
		if f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." {
			return nil, fmt.Errorf("manifest lists %q, which is not a plain file name", f.Name)
		}
		listed[f.Name] = true
		b, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != f.SHA256 || len(b) != f.Bytes {
			return nil, fmt.Errorf("%s: its SHA-256 is %x (%d bytes), the manifest says %s (%d bytes): the file was changed", f.Name, sum, len(b), f.SHA256, f.Bytes)
		}
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, de := range des {
		if !listed[de.Name()] {
			return nil, fmt.Errorf("%s is not in the manifest: a file was added", de.Name())
		}
	}
	cp, err := m.Checkpoint.checkpoint()
	if err != nil {
		return nil, err
	}
	if err := VerifyCheckpoint(pub, cp); err != nil {
		return nil, err
	}
	rep := &BundleReport{Manifest: m, KeyID: KeyID(pub), Files: len(m.Files)}
	switch m.Format {
	case EvidenceFormat:
		if err := verifyProofs(filepath.Join(dir, "entries.jsonl"), cp, &m, rep); err != nil {
			return nil, err
		}
	case ArchiveFormat:
		if err := verifySegment(filepath.Join(dir, "entries.jsonl"), cp, &m, rep); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown bundle format %q", m.Format)
	}
	return rep, nil
}

// archiveEntry is one line of entries.jsonl.
type archiveEntry struct {
	Seq        int64               `json:"seq"`
	MsgID      string              `json:"msg_id"`
	Subject    string              `json:"subject"`
	Type       string              `json:"type"`
	Source     string              `json:"source"`
	WorkerID   string              `json:"worker_id"`
	System     string              `json:"system"`
	Actor      string              `json:"actor"`
	EventTime  string              `json:"event_time"`
	RecordedAt string              `json:"recorded_at"`
	StreamSeq  int64               `json:"stream_seq"`
	TraceID    string              `json:"trace_id"`
	Headers    map[string][]string `json:"headers"`
	Payload    []byte              `json:"payload"`
	PrevHash   string              `json:"prev_hash"`
	Hash       string              `json:"hash"`
	// Evidence bundles: the inclusion proof (hex hashes) in the tree of the checkpoint.
	Proof []string `json:"proof,omitempty"`
}

func verifySegment(path string, cp *ledgerv1.Checkpoint, m *Manifest, rep *BundleReport) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tree, err := manifestRange(m)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	var (
		prev []byte
		last int64
	)
	for sc.Scan() {
		var a archiveEntry
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return fmt.Errorf("entries.jsonl line %d: %w", rep.Entries+1, err)
		}
		e, err := a.entry()
		if err != nil {
			return fmt.Errorf("entry %d: %w", a.Seq, err)
		}
		if rep.Entries == 0 {
			if e.Seq != m.FirstSeq {
				return fmt.Errorf("the segment starts at entry %d, the manifest says %d", e.Seq, m.FirstSeq)
			}
			if e.Seq == 1 && e.Seq <= m.LegacyThrough && !bytes.Equal(e.PrevHash, genesis) {
				return errors.New("entry 1 does not start from the genesis hash")
			}
			prev = e.PrevHash
			rep.FirstPrev = e.PrevHash
		} else if e.Seq != last+1 {
			return fmt.Errorf("entry %d is missing from the segment", last+1)
		}
		if err := checkEntryHash(e, prev, m.LegacyThrough); err != nil {
			return err
		}
		if err := tree.Append(e.Hash, nil); err != nil {
			return fmt.Errorf("entry %d: %w", e.Seq, err)
		}
		prev, last = e.Hash, e.Seq
		rep.Entries++
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if last != m.LastSeq || last != cp.Seq {
		return fmt.Errorf("the segment ends at entry %d; the manifest says %d and the checkpoint %d", last, m.LastSeq, cp.Seq)
	}
	rep.Range = tree
	if cp.Note != "" {
		if tree.Begin() != 0 || !bytes.Equal(rootOf(tree), cp.HeadHash) {
			return fmt.Errorf("the tree through entry %d does not match the signed checkpoint: the segment was rewritten", last)
		}
		return nil
	}
	if !bytes.Equal(prev, cp.HeadHash) {
		return fmt.Errorf("entry %d does not match the signed checkpoint: the segment was rewritten", last)
	}
	return nil
}

// checkEntryHash checks an entry's stored hash against its content: the leaf hash, or for
// the legacy prefix the chain hash from prev (and the link to prev).
func checkEntryHash(e *entry, prev []byte, legacyThrough int64) error {
	if e.Seq <= legacyThrough {
		if prev != nil && !bytes.Equal(e.PrevHash, prev) {
			return fmt.Errorf("entry %d: prev_hash does not match the hash of entry %d", e.Seq, e.Seq-1)
		}
		if got := chainHash(e.PrevHash, e); !bytes.Equal(got, e.Hash) {
			return fmt.Errorf("entry %d: stored hash does not match its content", e.Seq)
		}
		return nil
	}
	if len(e.PrevHash) != 0 {
		return fmt.Errorf("entry %d has a prev_hash, but it is a tree leaf", e.Seq)
	}
	if got := leafHash(e); !bytes.Equal(got, e.Hash) {
		return fmt.Errorf("entry %d: stored hash does not match its content", e.Seq)
	}
	return nil
}

// manifestRange is the compact range of the leaves before the archive's first entry.
func manifestRange(m *Manifest) (*compact.Range, error) {
	var b []byte
	for _, h := range m.PrefixRange {
		x, err := hex.DecodeString(h)
		if err != nil {
			return nil, fmt.Errorf("manifest prefix_range: %w", err)
		}
		b = append(b, x...)
	}
	if m.FirstSeq < 1 {
		return nil, fmt.Errorf("manifest first_seq %d", m.FirstSeq)
	}
	if m.FirstSeq > 1 && len(b) == 0 {
		// A legacy ledger pruned before the tree: the tree of this segment cannot start at 0.
		return rangeFactory.NewEmptyRange(uint64(m.FirstSeq - 1)), nil
	}
	r, err := decodeRange(m.FirstSeq-1, b)
	if err != nil {
		return nil, fmt.Errorf("manifest prefix_range: %w", err)
	}
	return r, nil
}

func hexRange(b []byte) []string {
	var out []string
	for i := 0; i+HashSize <= len(b); i += HashSize {
		out = append(out, hex.EncodeToString(b[i:i+HashSize]))
	}
	return out
}

func (a *archiveEntry) entry() (*entry, error) {
	et, err := time.Parse(time.RFC3339Nano, a.EventTime)
	if err != nil {
		return nil, err
	}
	rt, err := time.Parse(time.RFC3339Nano, a.RecordedAt)
	if err != nil {
		return nil, err
	}
	ph, err := hex.DecodeString(a.PrevHash)
	if err != nil {
		return nil, err
	}
	h, err := hex.DecodeString(a.Hash)
	if err != nil {
		return nil, err
	}
	if a.Headers == nil {
		a.Headers = map[string][]string{}
	}
	if a.Payload == nil {
		a.Payload = []byte{}
	}
	return &entry{Seq: a.Seq, MsgID: a.MsgID, Subject: a.Subject, Type: a.Type, Source: a.Source, WorkerID: a.WorkerID, System: a.System,
		Actor: a.Actor, EventTime: et, RecordedAt: rt, StreamSeq: a.StreamSeq, TraceID: a.TraceID, Headers: a.Headers, Payload: a.Payload,
		PrevHash: ph, Hash: h}, nil
}

// Archive exports the entries recorded before req.before (default: now minus Retention) as
// a verifiable chain segment: from the oldest entry kept up to the first checkpoint at or
// after the cutoff, so the segment's end is signed. Entries may be pruned only after their
// archive is stored and verified (see docs/ledger.md); the ledger never deletes them itself.
func (s *Service) Archive(ctx context.Context, req *ledgerv1.ArchiveRequest) (*ledgerv1.ArchiveResponse, error) {
	before := time.Now().Add(-s.cfg.Retention)
	if req.GetBefore() != nil {
		if err := req.GetBefore().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "before: %v", err)
		}
		before = req.GetBefore().AsTime()
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var first, cut int64
	if err := tx.QueryRow(ctx, "SELECT coalesce(min(seq), 0), coalesce(max(seq) FILTER (WHERE recorded_at < $1), 0) FROM entries", before).Scan(&first, &cut); err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	if cut == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "no entries were recorded before %s", before.UTC().Format(time.RFC3339))
	}
	cps, err := loadCheckpoints(ctx, tx, cut-1, 1)
	if err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	if len(cps) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "no signed checkpoint covers entry %d yet: retry after the next checkpoint", cut)
	}
	cp := cps[0]
	var (
		legacy int64
		prefix []byte
	)
	if err := tx.QueryRow(ctx, "SELECT through_seq FROM legacy").Scan(&legacy); err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	if first > 1 {
		if err := tx.QueryRow(ctx, "SELECT tree_range FROM prunes WHERE up_to_seq = $1", first-1).Scan(&prefix); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, s.internal(ctx, "archive", err)
		}
	}
	var buf bytes.Buffer
	rows, err := tx.Query(ctx, entrySelect+" WHERE seq >= $1 AND seq <= $2 ORDER BY seq", first, cp.Seq)
	if err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	enc := json.NewEncoder(&buf)
	var n int64
	for rows.Next() {
		e, hdr, err := scanEntry(rows)
		if err != nil {
			rows.Close()
			return nil, s.internal(ctx, "archive", err)
		}
		a := archiveEntry{Seq: e.Seq, MsgID: e.MsgID, Subject: e.Subject, Type: e.Type, Source: e.Source, WorkerID: e.WorkerID, System: e.System,
			Actor: e.Actor, EventTime: e.EventTime.Format(time.RFC3339Nano), RecordedAt: e.RecordedAt.Format(time.RFC3339Nano), StreamSeq: e.StreamSeq,
			TraceID: e.TraceID, Payload: e.Payload, PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash)}
		if err := json.Unmarshal(hdr, &a.Headers); err != nil {
			rows.Close()
			return nil, s.internal(ctx, "archive", fmt.Errorf("entry %d headers: %w", e.Seq, err))
		}
		if err := enc.Encode(&a); err != nil {
			rows.Close()
			return nil, s.internal(ctx, "archive", err)
		}
		n++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	m := Manifest{Format: ArchiveFormat, CreatedAt: time.Now().UTC().Format(time.RFC3339Nano), To: before.UTC().Format(time.RFC3339Nano),
		Checkpoint: manifestCP(cp), FirstSeq: first, LastSeq: cp.Seq, PrefixRange: hexRange(prefix), LegacyThrough: legacy}
	files, err := s.sealBundle(m, []*ledgerv1.BundleFile{{Name: "entries.jsonl", Content: buf.Bytes()}})
	if err != nil {
		return nil, s.internal(ctx, "archive", err)
	}
	return &ledgerv1.ArchiveResponse{Files: files, FirstSeq: first, LastSeq: cp.Seq}, nil
}

// WriteBundle writes bundle files into dir (created when missing; it must be empty).
func WriteBundle(dir string, files []*ledgerv1.BundleFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(des) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	}
	for _, f := range files {
		if f.GetName() != filepath.Base(f.GetName()) || strings.HasPrefix(f.GetName(), ".") {
			return fmt.Errorf("refusing to write %q", f.GetName())
		}
		if err := os.WriteFile(filepath.Join(dir, f.GetName()), f.GetContent(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
