package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func init() {
	commands["task list"] = command{
		usage: "task list [--status open|overdue|completed|all] [--connector C] [--worker ID]   manual tasks for operators",
		run:   taskList,
	}
	commands["task retry"] = command{
		usage: "task retry (--link LINK_ID | --case CASE_ID)   re-drive failed work: one account, or every unverified account of a leaver case",
		run:   taskRetry,
	}
	commands["task complete"] = command{
		usage: "task complete TASK_ID --evidence TEXT [--file PATH]   attest a manual task as done (you are recorded as who)",
		run:   taskComplete,
	}
}

func taskList(e *env) error {
	st := e.fs.String("status", "open", "open, overdue, completed or all")
	conn := e.fs.String("connector", "", "only this connector")
	worker := e.fs.String("worker", "", "only this worker")
	limit := e.fs.Int("limit", 0, "at most this many (default 500)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl task list [flags]")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListTasks(e.ctx, &provisionerv1.ListTasksRequest{
		Status: *st, Connector: *conn, WorkerId: *worker, Limit: int32(*limit)})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "TASK\tCONNECTOR\tWORKER\tUSERNAME\tOPERATION\tSTATUS\tDEADLINE\tCOMPLETED BY\tEVIDENCE")
		for _, t := range res.Tasks {
			st := t.Status
			if t.Overdue {
				st = "OVERDUE"
			}
			by, ev := "-", "-"
			if a := t.Attestation; a != nil {
				by, ev = a.CompletedBy+" "+when(a.CompletedAt), a.Evidence
				if a.EvidenceSha256 != "" {
					ev += " sha256:" + a.EvidenceSha256[:12] + "…"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.TaskId, t.Connector, t.WorkerId, t.Username, t.Operation, st, when(t.Deadline), by, ev)
		}
	})
}

func taskComplete(e *env) error {
	evidence := e.fs.String("evidence", "", "what you did and saw (a ticket number, where the screenshot is)")
	file := e.fs.String("file", "", "an evidence file (screenshot, export): its SHA-256 and name are recorded, not its content")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 {
		return errors.New("usage: tenurectl task complete TASK_ID --evidence TEXT [--file PATH]")
	}
	if *evidence == "" && *file == "" {
		return errors.New("task complete: give --evidence TEXT and/or --file PATH: an attestation needs evidence")
	}
	req := &provisionerv1.CompleteManualTaskRequest{TaskId: e.pos()[0], Evidence: *evidence}
	if *file != "" {
		sum, err := fileSHA256(*file)
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		req.EvidenceSha256, req.EvidenceFileName = sum, filepath.Base(*file)
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).CompleteManualTask(e.ctx, req)
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		t, a := res.Task, res.Task.Attestation
		fmt.Fprintf(tw, "task %s (%s %s in %s) completed by %s at %s\n", t.TaskId, t.Operation, t.Username, t.Connector, a.CompletedBy, when(a.CompletedAt))
		if a.EvidenceSha256 != "" {
			fmt.Fprintf(tw, "evidence file %s sha256 %s\n", a.EvidenceFileName, a.EvidenceSha256)
		}
		fmt.Fprintln(tw, "tenure now reads the account back from this attestation; `tenurectl case WORKER` shows the case.")
	})
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func taskRetry(e *env) error {
	link := e.fs.String("link", "", "an account link id (tenurectl case WORKER shows them)")
	caseID := e.fs.String("case", "", "a leaver case id: re-drive all its unverified accounts")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 || (*link == "") == (*caseID == "") {
		return errors.New("usage: tenurectl task retry (--link LINK_ID | --case CASE_ID)")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).RetryTask(e.ctx, &provisionerv1.RetryTaskRequest{LinkId: *link, CaseId: *caseID})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "%d command(s) issued: %v\n", len(res.CommandIds), res.CommandIds)
	})
}
