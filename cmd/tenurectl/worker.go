package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

func init() {
	commands["worker list"] = command{
		usage: "worker list [--status S] [--type T] [--department D] [--manager ID] [--ending-before DATE]   registry records",
		run:   workerList,
	}
	commands["worker history"] = command{
		usage: "worker history WORKER                    HR events of a worker: applied, stale, held, cancelled",
		run:   workerHistory,
	}
}

func workerList(e *env) error {
	st := e.fs.String("status", "", "active, on_leave or terminated")
	typ := e.fs.String("type", "", "employee, contractor, temp, student, intern, volunteer or vendor")
	dept := e.fs.String("department", "", "department")
	mgr := e.fs.String("manager", "", "manager's worker id")
	ending := e.fs.String("ending-before", "", "only workers whose end date is before this date (YYYY-MM-DD)")
	limit := e.fs.Int("limit", 0, "at most this many workers (default all)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl worker list [flags]")
	}
	req := &intakev1.ListWorkersRequest{Department: *dept, ManagerId: *mgr, EndingBefore: *ending}
	if *st != "" {
		v, ok := eventsv1.WorkerStatus_value["WORKER_STATUS_"+strings.ToUpper(*st)]
		if !ok || v == 0 {
			return fmt.Errorf("--status %q: use active, on_leave or terminated", *st)
		}
		req.Status = eventsv1.WorkerStatus(v)
	}
	if *typ != "" {
		v, ok := eventsv1.WorkerType_value["WORKER_TYPE_"+strings.ToUpper(*typ)]
		if !ok || v == 0 {
			return fmt.Errorf("--type %q: use employee, contractor, temp, student, intern, volunteer or vendor", *typ)
		}
		req.WorkerType = eventsv1.WorkerType(v)
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	client := intakev1.NewWorkforceServiceClient(x.conn)
	all := &intakev1.ListWorkersResponse{}
	for {
		if *limit > 0 {
			req.PageSize = int32(min(*limit-len(all.Workers), 1000))
		}
		res, err := client.ListWorkers(e.ctx, req)
		if err != nil {
			return err
		}
		all.Workers = append(all.Workers, res.Workers...)
		if res.NextPageToken == "" || (*limit > 0 && len(all.Workers) >= *limit) {
			break
		}
		req.PageToken = res.NextPageToken
	}
	return x.print(all, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "WORKER\tSTATUS\tTYPE\tNAME\tJOB\tDEPARTMENT\tMANAGER\tEND\tEFFECTIVE")
		for _, r := range all.Workers {
			w := r.Worker
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", w.WorkerId, state(w.Status.String()), state(w.WorkerType.String()),
				strings.TrimSpace(w.GivenName+" "+w.FamilyName), w.JobCode, w.Department, w.ManagerId, w.EndDate, when(r.EffectiveTime))
		}
	})
}

func workerHistory(e *env) error {
	x, w, err := e.forWorker()
	if err != nil {
		return err
	}
	res, err := intakev1.NewWorkforceServiceClient(x.conn).GetHistory(e.ctx, &intakev1.GetHistoryRequest{WorkerId: w})
	if err != nil {
		return err
	}
	after := func(h *intakev1.HistoryEntry) string {
		if h.GetWorker().GetStatus() == eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED {
			return "-" // held: decided when it fires
		}
		return state(h.GetWorker().GetStatus().String())
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "EFFECTIVE\tRECEIVED\tTYPE\tKIND\tSTATE\tSTATUS AFTER\tSOURCE\tREASON\tEVENT")
		for _, h := range res.Entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", when(h.EffectiveTime), when(h.ReceivedTime), h.HrEventType, h.Kind,
				strings.ToLower(strings.TrimPrefix(h.State.String(), "HISTORY_ENTRY_STATE_")), after(h),
				h.Source, h.Reason, h.EventId)
		}
	})
}
