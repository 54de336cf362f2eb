// Command tenurectl is tenure's operator CLI over gRPC: leaver cases, accounts, queues,
// grants, workers, the audit ledger, and signed test webhooks.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/webhook"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

const usage = `tenurectl: operate tenure.

Usage:
  tenurectl case WORKER [--wait 30s]         leaver case with per-account status
  tenurectl cases [--status overdue]         leaver cases, overdue first, how late, how far
  tenurectl accounts WORKER                  account links with desired and observed state
  tenurectl queues                           provisioning queue per connector
  tenurectl grants --worker ID | --system S  grants and who approved them
  tenurectl worker get WORKER                the worker registry record
  tenurectl ledger query [--worker ID] [--subject PREFIX] [--limit N]
  tenurectl ledger verify [--checkpoint FILE] check the ledger against its witnessed checkpoint
  tenurectl webhook send --type hire --worker ID [--job-code RN] [--email E] ...
  tenurectl webhook sign --file BODY.json    print Standard Webhooks headers for curl

Common flags (any command): --config FILE (default $TENURECTL_CONFIG or .tenure/dev/tenurectl.yaml),
  --addr HOST:PORT, --token T (or $TENURE_TOKEN), -o table|json, --ca-cert FILE, --plaintext
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tenurectl:", explain(err))
		}
		os.Exit(exitCode(err))
	}
}

// explain turns gRPC status errors into plain sentences.
func explain(err error) string {
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable:
			return "tenure is not reachable: " + s.Message() + " (is `tenure dev` running? check --addr)"
		case codes.Unauthenticated:
			return "not authenticated: " + s.Message() + " (check --token or the config file)"
		case codes.PermissionDenied:
			return "permission denied: " + s.Message()
		case codes.NotFound:
			return s.Message()
		}
		return s.Code().String() + ": " + s.Message()
	}
	return err.Error()
}

type cli struct {
	cfg    app.CtlConfig
	output string
	stdout io.Writer
	conn   *grpc.ClientConn
}

type common struct {
	config, addr, token, output, caCert string
	plaintext                           bool
}

func (c *common) register(fs *flag.FlagSet) {
	def := os.Getenv("TENURECTL_CONFIG")
	if def == "" {
		def = ".tenure/dev/tenurectl.yaml"
	}
	fs.StringVar(&c.config, "config", def, "tenurectl config file")
	fs.StringVar(&c.addr, "addr", os.Getenv("TENURE_ADDR"), "gRPC address of tenure")
	fs.StringVar(&c.token, "token", os.Getenv("TENURE_TOKEN"), "bearer token")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	fs.StringVar(&c.caCert, "ca-cert", "", "CA certificate to verify tenure's TLS certificate")
	fs.BoolVar(&c.plaintext, "plaintext", false, "connect without TLS (a loopback dev server only: the token travels in the clear)")
}

func (c *common) load(stdout io.Writer) (*cli, error) {
	x := &cli{output: c.output, stdout: stdout}
	if c.output != "table" && c.output != "json" {
		return nil, fmt.Errorf("-o must be table or json, not %q", c.output)
	}
	if b, err := os.ReadFile(c.config); err == nil {
		if err := yaml.Unmarshal(b, &x.cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", c.config, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if c.addr != "" {
		x.cfg.GRPCAddr = c.addr
	}
	if c.token != "" {
		x.cfg.Token = c.token
	}
	if c.caCert != "" {
		x.cfg.Insecure = false
	}
	if c.plaintext {
		x.cfg.Insecure = true
	}
	return x, nil
}

func (x *cli) dial(caCert string) error {
	if x.cfg.GRPCAddr == "" {
		return errors.New("no tenure address: pass --addr or run `tenure dev`, which writes .tenure/dev/tenurectl.yaml")
	}
	if x.cfg.Token == "" {
		return errors.New("no token: pass --token or set TENURE_TOKEN")
	}
	creds := insecure.NewCredentials()
	if !x.cfg.Insecure {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if caCert != "" {
			pem, err := os.ReadFile(caCert)
			if err != nil {
				return err
			}
			pool.AppendCertsFromPEM(pem)
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(x.cfg.GRPCAddr, grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(authn.BearerCredentials{Token: x.cfg.Token, Insecure: x.cfg.Insecure}),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()))
	if err != nil {
		return err
	}
	x.conn = conn
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		for _, name := range sortedCommands() {
			fmt.Fprintf(stdout, "  tenurectl %s\n", commands[name].usage)
		}
		if len(args) == 0 {
			return errors.New("no command")
		}
		return nil
	}
	cmd, rest := args[0], args[1:]
	// A group name takes the next word as its subcommand, unless that is a flag, or the group
	// is also a command of its own whose argument this is ("tenurectl accounts WORKER" beside
	// "tenurectl accounts link ..."): then the group's own command runs ("tenurectl queue
	// --watch").
	if len(rest) > 0 && isGroup(cmd) && !strings.HasPrefix(rest[0], "-") {
		if _, sub := commands[cmd+" "+rest[0]]; sub || !groupTakesArgs[cmd] {
			cmd, rest = cmd+" "+rest[0], rest[1:]
		}
	}
	fs := flag.NewFlagSet("tenurectl "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	// Positional arguments may come before or after flags.
	var pos []string
	parse := func() error {
		for {
			if err := fs.Parse(rest); err != nil {
				return err
			}
			if fs.NArg() == 0 {
				return nil
			}
			pos, rest = append(pos, fs.Arg(0)), fs.Args()[1:]
		}
	}
	needArg := func(what string) (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("usage: tenurectl %s %s", cmd, what)
		}
		return pos[0], nil
	}
	connect := func() (*cli, error) {
		x, err := c.load(stdout)
		if err != nil {
			return nil, err
		}
		return x, x.dial(c.caCert)
	}
	// forWorker parses the flags, takes the one WORKER argument and connects.
	forWorker := func() (*cli, string, error) {
		if err := parse(); err != nil {
			return nil, "", err
		}
		w, err := needArg("WORKER")
		if err != nil {
			return nil, "", err
		}
		x, err := connect()
		return x, w, err
	}
	switch cmd {
	case "case":
		wait := fs.Duration("wait", 0, "wait up to this long for the case to complete")
		x, w, err := forWorker()
		if err != nil {
			return err
		}
		return x.showCase(ctx, w, *wait)
	case "accounts":
		x, w, err := forWorker()
		if err != nil {
			return err
		}
		res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: w})
		if err != nil {
			return err
		}
		return x.print(res, func(tw *tabwriter.Writer) {
			// OBSERVED and HELD are what the target showed at its last read-back (also after a
			// failed ensure); WANTED is what the grants explain.
			fmt.Fprintln(tw, "CONNECTOR\tUSERNAME\tDESIRED\tOBSERVED\tGEN\tWANTED\tHELD\tVERIFIED\tLAST ERROR")
			for _, a := range res.Accounts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", a.Connector, a.Username, state(a.DesiredState.String()), state(a.ObservedState.String()),
					a.ObservedGeneration, a.Generation, strings.Join(a.DesiredEntitlements, ","), strings.Join(a.Entitlements, ","), when(a.VerifiedAt), a.LastError)
			}
		})
	case "queues":
		if err := parse(); err != nil {
			return err
		}
		x, err := connect()
		if err != nil {
			return err
		}
		res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
		if err != nil {
			return err
		}
		return x.print(res, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "CONNECTOR\tTYPE\tPENDING\tIN FLIGHT\tREDELIVERED\tDEAD LETTERS")
			for _, q := range res.Queues {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", q.Connector, q.ConnectorType, q.Pending, q.InFlight, q.Redelivered, q.DeadLetters)
			}
		})
	case "grants":
		worker := fs.String("worker", "", "worker id")
		system := fs.String("system", "", "system name")
		all := fs.Bool("all", false, "include revoked grants")
		if err := parse(); err != nil {
			return err
		}
		x, err := connect()
		if err != nil {
			return err
		}
		res, err := approvalv1.NewGovernanceServiceClient(x.conn).ListGrants(ctx, &approvalv1.ListGrantsRequest{WorkerId: *worker, System: *system, IncludeRevoked: *all})
		if err != nil {
			return err
		}
		return x.print(res, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "WORKER\tSYSTEM\tPACKAGE\tROLE\tAPPROVED BY\tGRANTED\tREVOKED")
			for _, g := range res.Grants {
				var by []string
				for _, a := range g.Approvals {
					if a.Automatic {
						by = append(by, a.Approver)
					} else {
						by = append(by, a.Stage+":"+a.Approver)
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.WorkerId, g.System, g.Package, g.Role, strings.Join(by, ","), when(g.GrantedAt), when(g.RevokedAt))
			}
		})
	case "worker get":
		x, w, err := forWorker()
		if err != nil {
			return err
		}
		res, err := intakev1.NewWorkforceServiceClient(x.conn).GetWorker(ctx, &intakev1.GetWorkerRequest{WorkerId: w})
		if err != nil {
			return err
		}
		return x.print(res, func(tw *tabwriter.Writer) {
			wk := res.Worker
			for _, kv := range [][2]string{{"worker", wk.WorkerId}, {"status", state(wk.Status.String())}, {"type", state(wk.WorkerType.String())},
				{"name", wk.GivenName + " " + wk.FamilyName}, {"email", wk.Email}, {"job code", wk.JobCode}, {"department", wk.Department},
				{"manager", wk.ManagerId}, {"location", wk.Location}, {"sponsor", wk.SponsorId}, {"vendor org", wk.VendorOrg},
				{"start", wk.StartDate}, {"end", wk.EndDate}, {"effective", when(res.EffectiveTime)}, {"last event", res.LastEventId}} {
				fmt.Fprintf(tw, "%s\t%s\n", kv[0], kv[1])
			}
		})
	case "ledger query":
		worker := fs.String("worker", "", "worker id")
		subject := fs.String("subject", "", "subject prefix, e.g. tenure.revocation.")
		limit := fs.Int("limit", 100, "at most this many entries")
		after := fs.Int64("after", 0, "entries after this sequence")
		if err := parse(); err != nil {
			return err
		}
		x, err := connect()
		if err != nil {
			return err
		}
		res, err := ledgerv1.NewLedgerServiceClient(x.conn).Query(ctx, &ledgerv1.QueryRequest{WorkerId: *worker, SubjectPrefix: *subject, Limit: int32(*limit), AfterSeq: *after})
		if err != nil {
			return err
		}
		return x.print(res, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "SEQ\tTIME\tSUBJECT\tSYSTEM\tACTOR\tHASH")
			for _, e := range res.Entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%x\n", e.Seq, when(e.EventTime), e.Subject, e.System, e.Actor, e.Hash[:min(6, len(e.Hash))])
			}
		})
	case "webhook send":
		return webhookSend(ctx, fs, &c, rest, stdout)
	case "webhook sign":
		file := fs.String("file", "", "body to sign (JSON)")
		id := fs.String("id", "", "webhook-id (default: a new one)")
		if err := parse(); err != nil {
			return err
		}
		x, err := c.load(stdout)
		if err != nil {
			return err
		}
		body, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		key, err := webhook.ParseSecret(x.cfg.Webhook.Secret)
		if err != nil {
			return fmt.Errorf("webhook secret from %s: %w", c.config, err)
		}
		if *id == "" {
			*id = "msg_" + fmt.Sprint(time.Now().UnixNano())
		}
		now := time.Now()
		fmt.Fprintf(stdout, "-H 'webhook-id: %s' -H 'webhook-timestamp: %d' -H 'webhook-signature: %s'\n", *id, now.Unix(), webhook.Sign(key, *id, now, body))
		return nil
	}
	if ext, ok := commands[cmd]; ok {
		return ext.run(&env{ctx: ctx, fs: fs, common: &c, stdout: stdout, parse: parse, pos: func() []string { return pos },
			connect: connect, forWorker: forWorker})
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func webhookSend(ctx context.Context, fs *flag.FlagSet, c *common, args []string, stdout io.Writer) error {
	typ := fs.String("type", "hire", "HR event type: hire, termination, job_change, leave_start, ...")
	worker := fs.String("worker", "", "worker id")
	job := fs.String("job-code", "", "job code")
	email := fs.String("email", "", "work email")
	given := fs.String("given-name", "", "given name")
	family := fs.String("family-name", "", "family name")
	dept := fs.String("department", "", "department")
	manager := fs.String("manager", "", "manager's worker id")
	wtype := fs.String("worker-type", "employee", "employee, contractor, temp, student, intern, volunteer, vendor")
	effective := fs.String("effective-time", "", "RFC 3339 effective time (default now)")
	file := fs.String("file", "", "send this JSON body instead of building one")
	id := fs.String("id", "", "webhook-id (default: a new one; repeat one to test dedupe)")
	url := fs.String("url", "", "webhook URL (default from the config file)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	x, err := c.load(stdout)
	if err != nil {
		return err
	}
	if *url == "" {
		*url = x.cfg.Webhook.URL
	}
	if *url == "" {
		return errors.New("no webhook URL: pass --url or run `tenure dev`")
	}
	key, err := webhook.ParseSecret(x.cfg.Webhook.Secret)
	if err != nil {
		return fmt.Errorf("webhook secret from %s: %w", c.config, err)
	}
	var body []byte
	if *file != "" {
		if body, err = os.ReadFile(*file); err != nil {
			return err
		}
	} else {
		if *worker == "" {
			return errors.New("--worker is required")
		}
		w := map[string]string{"worker_id": *worker, "worker_type": *wtype}
		for k, v := range map[string]string{"job_code": *job, "email": *email, "given_name": *given, "family_name": *family, "department": *dept, "manager_id": *manager} {
			if v != "" {
				w[k] = v
			}
		}
		ev := map[string]any{"type": *typ, "worker": w}
		if *effective != "" {
			ev["effective_time"] = *effective
		}
		body, _ = json.Marshal(ev)
	}
	if *id == "" {
		*id = "msg_" + fmt.Sprint(time.Now().UnixNano())
	}
	now := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(webhook.HeaderID, *id)
	req.Header.Set(webhook.HeaderTimestamp, fmt.Sprint(now.Unix()))
	req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, *id, now, body))
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	fmt.Fprintf(stdout, "%s %s\n", resp.Status, strings.TrimSpace(string(out)))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("webhook rejected: %s", resp.Status)
	}
	return nil
}

func (x *cli) showCase(ctx context.Context, worker string, wait time.Duration) error {
	client := provisionerv1.NewProvisioningServiceClient(x.conn)
	deadline := time.Now().Add(wait)
	var res *provisionerv1.GetLeaverCaseResponse
	for {
		var err error
		res, err = client.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		done := err == nil && res.LeaverCase.Status.String() == "LEAVER_CASE_STATUS_COMPLETED"
		if done || time.Now().After(deadline) {
			if err != nil {
				return err
			}
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	c := res.LeaverCase
	return x.print(res, func(tw *tabwriter.Writer) {
		took := ""
		if c.CompletedAt != nil {
			took = c.CompletedAt.AsTime().Sub(c.OpenedAt.AsTime()).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "case\t%s\nworker\t%s\nstatus\t%s\nopened\t%s\ncompleted\t%s\ttook %s\ndeadline\t%s\t%s\n\n", c.CaseId, c.WorkerId, state(c.Status.String()),
			when(c.OpenedAt), when(c.CompletedAt), took, when(c.Deadline), deadlineNote(c, time.Now()))
		fmt.Fprintln(tw, "CONNECTOR\tUSERNAME\tSTATUS\tREAD BACK\tATTEMPTS\tVERIFIED\tLAST ERROR")
		for _, a := range c.Accounts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.Connector, a.Username, a.Status, state(a.ObservedState.String()), a.Attempts, when(a.VerifiedAt), a.LastError)
		}
	})
}

// deadlineNote says whether the case is (or was) past its deadline, and by how long: an
// open case past it is overdue now, a completed one may have finished late.
func deadlineNote(c *provisionerv1.LeaverCase, now time.Time) string {
	if c.Deadline == nil {
		return ""
	}
	deadline := c.Deadline.AsTime()
	if c.CompletedAt != nil && c.Status.String() == "LEAVER_CASE_STATUS_COMPLETED" {
		if late := c.CompletedAt.AsTime().Sub(deadline); late > 0 {
			return "completed " + late.Round(time.Second).String() + " late"
		}
		return "met"
	}
	if over := now.Sub(deadline); over > 0 {
		return "OVERDUE by " + over.Round(time.Second).String()
	}
	return deadline.Sub(now).Round(time.Second).String() + " left"
}

func (x *cli) print(m proto.Message, table func(*tabwriter.Writer)) error {
	if x.output == "json" {
		b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: false}.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(x.stdout, string(b))
		return err
	}
	tw := tabwriter.NewWriter(x.stdout, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func when(t *timestamppb.Timestamp) string {
	if t == nil || (t.Seconds == 0 && t.Nanos == 0) {
		return "-"
	}
	return t.AsTime().Local().Format("2006-01-02 15:04:05.000")
}

// state shortens enum names: ACCOUNT_STATE_DISABLED → disabled.
func state(s string) string {
	for _, p := range []string{"ACCOUNT_STATE_", "LEAVER_CASE_STATUS_", "WORKER_STATUS_", "WORKER_TYPE_"} {
		s = strings.TrimPrefix(s, p)
	}
	return strings.ToLower(s)
}
