package main

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	"github.com/tenure-dev/tenure/services/ledger"
)

// Ledger commands beyond query and verify: checkpoints, the public key, retention archives.

func init() {
	commands["ledger checkpoints"] = command{
		usage: "ledger checkpoints [--after SEQ] [--limit N]   signed checkpoints",
		run:   ledgerCheckpoints,
	}
	commands["ledger pubkey"] = command{
		usage: "ledger pubkey [--out FILE]                     the ledger's Ed25519 public key (PEM)",
		run:   ledgerPubkey,
	}
	commands["ledger archive"] = command{
		usage: "ledger archive --out DIR [--before DATE]       export entries older than the cutoff (default: retention) as a signed segment",
		run:   ledgerArchive,
	}
	commands["ledger verify-archive"] = command{
		usage: "ledger verify-archive DIR [--pubkey FILE]      check an archive offline",
		run:   evidenceVerify,
	}
}

func ledgerCheckpoints(e *env) error {
	after := e.fs.Int64("after", 0, "checkpoints after this sequence")
	limit := e.fs.Int("limit", 100, "at most this many")
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := ledgerv1.NewLedgerServiceClient(x.conn).ListCheckpoints(e.ctx, &ledgerv1.ListCheckpointsRequest{AfterSeq: *after, Limit: int32(*limit)})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "SEQ\tSIGNED\tHEAD HASH\tKEY")
		for _, c := range res.Checkpoints {
			fmt.Fprintf(tw, "%d\t%s\t%x\t%s\n", c.Seq, when(c.SignedAt), c.HeadHash, c.KeyId)
		}
	})
}

func ledgerPubkey(e *env) error {
	out := e.fs.String("out", "", "write the PEM to this file")
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := ledgerv1.NewLedgerServiceClient(x.conn).GetPublicKey(e.ctx, &ledgerv1.GetPublicKeyRequest{})
	if err != nil {
		return err
	}
	if *out != "" {
		if err := os.WriteFile(*out, []byte(res.Pem), 0o644); err != nil {
			return err
		}
	}
	if x.output == "json" {
		return x.print(res, nil)
	}
	if *out != "" {
		fmt.Fprintf(e.stdout, "key %s written to %s\n", res.KeyId, *out)
		return nil
	}
	fmt.Fprint(e.stdout, res.Pem)
	return nil
}

func ledgerArchive(e *env) error {
	before := e.fs.String("before", "", "archive entries recorded before this time (default: now minus the retention period, 6 years)")
	out := e.fs.String("out", "", "directory to write the archive to (created; must be empty)")
	if err := e.parse(); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("--out DIR is required")
	}
	var b *timestamppb.Timestamp
	b, err := parseWhen(*before)
	if err != nil {
		return fmt.Errorf("--before: %w", err)
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := ledgerv1.NewLedgerServiceClient(x.conn).Archive(e.ctx, &ledgerv1.ArchiveRequest{Before: b}, maxEvidenceMsg)
	if err != nil {
		return err
	}
	if err := ledger.WriteBundle(*out, res.Files); err != nil {
		return err
	}
	if _, err := ledger.VerifyBundle(*out, nil); err != nil {
		return fmt.Errorf("the archive written to %s does not verify: %w", *out, err)
	}
	fmt.Fprintf(e.stdout, "archived entries %d..%d to %s (verified); store it before any pruning\n", res.FirstSeq, res.LastSeq, *out)
	return nil
}
