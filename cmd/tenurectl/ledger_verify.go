package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	"github.com/tenure-dev/tenure/services/ledger"
)

func init() {
	commands["ledger verify"] = command{
		usage: "ledger verify [--checkpoint FILE | --nats-url URL] [--pubkey FILE]  check the ledger against a witnessed checkpoint (exit 0 intact, 3 tampering, 4 could not check)",
		run:   ledgerVerify,
	}
}

// ledgerVerify asks the ledger to verify its database against a witnessed checkpoint and
// checks the answer's consistency proof itself. The checkpoint comes from --checkpoint (an
// auditor's own saved copy: no NATS needed), else from the witness stream at --nats-url (as
// the auditor NATS user), else the ledger reads its own witnesses.
func ledgerVerify(e *env) error {
	cpFile := e.fs.String("checkpoint", "", "a saved checkpoint (signed note) to check the database against, instead of the witness")
	natsURL := e.fs.String("nats-url", os.Getenv("TENURE_NATS_URL"), "NATS to read the newest witnessed checkpoint from (env TENURE_NATS_URL)")
	natsUser := e.fs.String("nats-user", envOr("TENURE_NATS_USER", "auditor"), "NATS user (env TENURE_NATS_USER; password from TENURE_NATS_PASSWORD)")
	pubkey := e.fs.String("pubkey", "", "the ledger's public key (PEM) to check the checkpoint with; default: the key the ledger reports")
	saveTo := e.fs.String("save-checkpoint", "", "write the witnessed checkpoint checked against to this file (for a later --checkpoint)")
	if err := e.parse(); err != nil {
		return &codeError{exitUsage, err}
	}
	var note []byte
	from := ""
	switch {
	case *cpFile != "":
		b, err := os.ReadFile(*cpFile)
		if err != nil {
			return fmt.Errorf("--checkpoint: %w", err)
		}
		note, from = b, *cpFile
	case *natsURL != "":
		b, err := readWitness(e, *natsURL, *natsUser)
		if err != nil {
			return unreachable(fmt.Errorf("read the witnessed checkpoint from %s: %w", *natsURL, err))
		}
		if b == nil {
			return unreachable(fmt.Errorf("the witness at %s holds no checkpoint yet", *natsURL))
		}
		note, from = b, "witness "+*natsURL
	}
	x, err := e.connect()
	if err != nil {
		return unreachableStatus(err)
	}
	client := ledgerv1.NewLedgerServiceClient(x.conn)
	var wcp *ledger.TreeCheckpoint
	if note != nil {
		// The checkpoint must be the ledger's own: check its signature here, not only there.
		var pemKey []byte
		if *pubkey != "" {
			if pemKey, err = os.ReadFile(*pubkey); err != nil {
				return fmt.Errorf("--pubkey: %w", err)
			}
		} else {
			k, err := client.GetPublicKey(e.ctx, &ledgerv1.GetPublicKeyRequest{})
			if err != nil {
				return unreachableStatus(err)
			}
			pemKey = []byte(k.Pem)
		}
		pub, err := ledger.ParsePublicKeyPEM(pemKey)
		if err != nil {
			return fmt.Errorf("public key: %w", err)
		}
		origin, _, _ := strings.Cut(string(note), "\n")
		if wcp, err = ledger.OpenCheckpoint(note, origin, pub); err != nil {
			fmt.Fprintf(e.stdout, "LEDGER TAMPERED (checkpoint): the checkpoint from %s does not verify with the ledger's key %s: %v (was the signing key replaced?)\n", from, ledger.KeyID(pub), err)
			return tampered(errors.New("ledger verification failed"))
		}
	}
	res, err := client.Verify(e.ctx, &ledgerv1.VerifyRequest{WitnessedCheckpoint: string(note)})
	if err != nil {
		return unreachableStatus(err)
	}
	if res.Ok && wcp != nil {
		// Check the ledger's answer on our own: its tree extends the checkpoint.
		if err := ledger.VerifyConsistency(wcp.Size, res.TreeSize, res.ConsistencyProof, wcp.Root, res.HeadHash); err != nil && !(len(res.ConsistencyProof) == 0 && res.PrunedThroughSeq > 0) {
			res.Ok, res.Finding = false, "fork"
			res.Problem = fmt.Sprintf("the ledger's tree of %d entries (root %x) is not proven to extend the checkpoint of %d entries (root %x) from %s: %v",
				res.TreeSize, res.HeadHash, wcp.Size, wcp.Root, from, err)
		}
	}
	if res.Ok && *saveTo != "" && note != nil {
		if err := os.WriteFile(*saveTo, note, 0o644); err != nil {
			return err
		}
	}
	if err := x.print(res, func(tw *tabwriter.Writer) {
		if res.Ok {
			fmt.Fprintf(tw, "ledger intact: %d entries, tree root %x, %d signed checkpoints (last at %d)\n", res.TreeSize, res.HeadHash, res.CheckpointsChecked, res.LastCheckpointSeq)
			switch {
			case res.WitnessedSize > 0:
				fmt.Fprintf(tw, "consistent with the checkpoint of %d entries (root %x) from %s", res.WitnessedSize, res.WitnessedRoot, orString(from, res.WitnessedFrom))
				if len(res.ConsistencyProof) > 0 || res.WitnessedSize == res.TreeSize {
					fmt.Fprint(tw, ", consistency proof checked here")
				}
				fmt.Fprintln(tw)
			default:
				fmt.Fprintln(tw, "warning: no witnessed checkpoint was checked against (pass --nats-url or --checkpoint)")
			}
			if res.PrunedThroughSeq > 0 {
				fmt.Fprintf(tw, "entries through %d were archived and pruned; verified from that signed anchor\n", res.PrunedThroughSeq)
			}
		} else {
			fmt.Fprintf(tw, "LEDGER TAMPERED (%s) at entry %d: %s (%d entries checked)\n", res.Finding, res.FirstBrokenSeq, res.Problem, res.EntriesChecked)
		}
	}); err != nil {
		return err
	}
	if !res.Ok {
		return tampered(errors.New("ledger verification failed: " + res.Finding))
	}
	return nil
}

func readWitness(e *env, url, user string) ([]byte, error) {
	opts := []nats.Option{nats.Name("tenurectl"), nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}
	if user != "" {
		opts = append(opts, nats.UserInfo(user, os.Getenv("TENURE_NATS_PASSWORD")), nats.CustomInboxPrefix("_INBOX_"+user))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return ledger.LatestWitnessed(e.ctx, js)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func orString(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
