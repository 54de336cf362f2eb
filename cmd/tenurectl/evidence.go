package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	"github.com/tenure-dev/tenure/services/ledger"
)

// Auditor evidence from the ledger: one command per question, and signed bundles.

// maxEvidenceMsg lets evidence bundles and archives exceed gRPC's 4 MiB default.
var maxEvidenceMsg = grpc.MaxCallRecvMsgSize(1 << 30)

func init() {
	for _, q := range ledger.Questions {
		commands["evidence "+q] = command{
			usage: "evidence " + q + " [--from DATE] [--to DATE] [--worker ID,...] [--sample N] [-o table|csv|json]",
			run:   func(e *env) error { return evidenceQuestion(e, q) },
		}
	}
	commands["evidence export"] = command{
		usage: "evidence export --out DIR [--from DATE] [--to DATE] [--worker ID,...] [--sample N]   signed evidence bundle",
		run:   evidenceExport,
	}
	commands["evidence verify"] = command{
		usage: "evidence verify DIR [--pubkey FILE]           check a bundle or archive offline",
		run:   evidenceVerify,
	}
}

// scopeFlags registers the flags every evidence command shares.
type scopeFlags struct {
	from, to, workers *string
	sample            *int
}

func registerScope(e *env) scopeFlags {
	return scopeFlags{
		from:    e.fs.String("from", "", "start of the period: YYYY-MM-DD or RFC 3339 (default: the ledger's beginning)"),
		to:      e.fs.String("to", "", "end of the period, exclusive (default: now)"),
		workers: e.fs.String("worker", "", "only these workers (comma-separated)"),
		sample:  e.fs.Int("sample", 0, "a random sample of this many workers"),
	}
}

func (f scopeFlags) get() (from, to *timestamppb.Timestamp, workers []string, err error) {
	if from, err = parseWhen(*f.from); err != nil {
		return nil, nil, nil, fmt.Errorf("--from: %w", err)
	}
	if to, err = parseWhen(*f.to); err != nil {
		return nil, nil, nil, fmt.Errorf("--to: %w", err)
	}
	for _, w := range strings.Split(*f.workers, ",") {
		if w = strings.TrimSpace(w); w != "" {
			workers = append(workers, w)
		}
	}
	return from, to, workers, nil
}

func parseWhen(s string) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return timestamppb.New(t), nil
		}
	}
	return nil, fmt.Errorf("%q is neither YYYY-MM-DD nor RFC 3339", s)
}

// csvOutput takes -o csv out of the common flags (which know table and json only).
func csvOutput(e *env) bool {
	if e.common.output == "csv" {
		e.common.output = "table"
		return true
	}
	return false
}

func evidenceQuestion(e *env, q string) error {
	sf := registerScope(e)
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) > 0 {
		return fmt.Errorf("usage: tenurectl %s", commands["evidence "+q].usage)
	}
	asCSV := csvOutput(e)
	from, to, workers, err := sf.get()
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := ledgerv1.NewLedgerServiceClient(x.conn).Evidence(e.ctx, &ledgerv1.EvidenceRequest{Question: q, From: from, To: to, WorkerIds: workers,
		Sample: int32(*sf.sample)}, maxEvidenceMsg)
	if err != nil {
		return err
	}
	switch {
	case asCSV:
		return ledger.WriteCSV(e.stdout, res)
	case x.output == "json":
		b, err := ledger.EvidenceJSON(res)
		if err != nil {
			return err
		}
		_, err = e.stdout.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s (ledger head %d, %d rows)\n\n", res.Title, res.HeadSeq, len(res.Rows))
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(res.Columns, "\t")))
	for _, r := range res.Rows {
		cells := make([]string, len(r.Cells))
		for i, c := range r.Cells {
			if c == "" {
				c = "-"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func evidenceExport(e *env) error {
	sf := registerScope(e)
	out := e.fs.String("out", "", "directory to write the bundle to (created; must be empty)")
	if err := e.parse(); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("--out DIR is required")
	}
	from, to, workers, err := sf.get()
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := ledgerv1.NewLedgerServiceClient(x.conn).ExportEvidence(e.ctx, &ledgerv1.ExportEvidenceRequest{From: from, To: to, WorkerIds: workers,
		Sample: int32(*sf.sample)}, maxEvidenceMsg)
	if err != nil {
		return err
	}
	if err := ledger.WriteBundle(*out, res.Files); err != nil {
		return err
	}
	// Check what was written, as the auditor will.
	rep, err := ledger.VerifyBundle(*out, nil)
	if err != nil {
		return fmt.Errorf("the bundle written to %s does not verify: %w", *out, err)
	}
	return x.print(res.Checkpoint, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "evidence bundle written to %s: %d files, signed by key %s, tied to checkpoint %d (%x)\n", *out, rep.Files, rep.KeyID,
			res.Checkpoint.Seq, res.Checkpoint.HeadHash)
		fmt.Fprintf(tw, "open %s/report.html; check it with: tenurectl evidence verify %s --pubkey KEY.pem\n", *out, *out)
	})
}

func evidenceVerify(e *env) error {
	pubkey := e.fs.String("pubkey", "", "the ledger's public key (PEM, from `tenurectl ledger pubkey`); without it the bundle's own key is used")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 {
		return errors.New("usage: tenurectl evidence verify DIR [--pubkey FILE]")
	}
	dir := e.pos()[0]
	var trusted []byte
	if *pubkey != "" {
		b, err := os.ReadFile(*pubkey)
		if err != nil {
			return err
		}
		trusted = b
	}
	return verifyBundleDir(e, dir, trusted)
}

func verifyBundleDir(e *env, dir string, trustedPEM []byte) error {
	var err error
	var rep *ledger.BundleReport
	if trustedPEM != nil {
		pub, perr := ledger.ParsePublicKeyPEM(trustedPEM)
		if perr != nil {
			return fmt.Errorf("--pubkey: %w", perr)
		}
		rep, err = ledger.VerifyBundle(dir, pub)
	} else {
		rep, err = ledger.VerifyBundle(dir, nil)
	}
	if errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err != nil {
		fmt.Fprintf(e.stdout, "BUNDLE INVALID: %s\n", err)
		return tampered(errors.New("bundle verification failed"))
	}
	m := rep.Manifest
	fmt.Fprintf(e.stdout, "bundle intact: %s, %d files, signed by key %s, checkpoint %d (%s, signed %s)\n", m.Format, rep.Files, rep.KeyID,
		m.Checkpoint.Seq, m.Checkpoint.HeadHash, m.Checkpoint.SignedAt)
	switch {
	case m.Format == ledger.EvidenceFormat && rep.Proved > 0:
		fmt.Fprintf(e.stdout, "entries: %d cited entries, each proven to be in the tree of the signed checkpoint (inclusion proofs checked offline)\n", rep.Proved)
	case m.Format == ledger.EvidenceFormat:
		fmt.Fprintf(e.stdout, "entries: %d cited entries matching their hashes (a legacy checkpoint: no inclusion proofs)\n", rep.Entries)
	case rep.Entries > 0:
		fmt.Fprintf(e.stdout, "archive segment: entries %d..%d matching the signed checkpoint's tree\n", m.FirstSeq, m.LastSeq)
	}
	if trustedPEM == nil {
		fmt.Fprintln(e.stdout, "note: checked against the bundle's own public key; pass --pubkey with the key obtained from the ledger to rule out a re-signed bundle")
	}
	return nil
}
