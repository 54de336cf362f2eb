package provisioner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// An event arriving while a leaver case is still verifying never leaves the case open with
// its accounts pending (issue 16, point 5). The leaver's disable is held at the target; then
// HR sends something for the worker and approval grants new access; then the disable goes on.
// Whatever came, the case completes with every account verified disabled. Only a rehire
// brings the worker back, and its access waits for the case: it is enabled once the
// termination has been carried out, never before.
func TestEventsDuringAnOpenLeaverCase(t *testing.T) {
	grant := func(t *testing.T, h *host, w string) { h.grant(t, w, "g-new", "saas", "writers") }
	for _, tc := range []struct {
		name string
		// events are what HR and approval send while the case verifies.
		events func(t *testing.T, h *host, worker string)
		// back: the worker comes back (rehire), so the access granted meanwhile is enabled
		// once the case is complete.
		back bool
	}{
		{"hire", func(t *testing.T, h *host, w string) { h.joiner(t, w, time.Now()); grant(t, h, w) }, false},
		{"job change", func(t *testing.T, h *host, w string) {
			h.workerEvent(t, w, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER, "job_change", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE)
			grant(t, h, w)
		}, false},
		{"leave end", func(t *testing.T, h *host, w string) {
			h.workerEvent(t, w, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, "leave_end", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE)
			grant(t, h, w)
		}, false},
		{"grant only", grant, false},
		{"rehire", func(t *testing.T, h *host, w string) { h.rehire(t, w, time.Now()); grant(t, h, w) }, true},
		{"rehire, then a leave", func(t *testing.T, h *host, w string) {
			h.rehire(t, w, time.Now())
			grant(t, h, w)
			h.workerEvent(t, w, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, "leave_start", eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE)
			h.workerEvent(t, w, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, "leave_end", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := connectortest.NewMemory("readers", "writers")
			g := newGate(mem, "disable")
			h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
			g.openAtEnd(t)
			const worker = "w-open"
			h.hire(t, worker, "saas")
			h.waitVerified(t, worker, 1)
			g.armed.Store(true)
			h.fire(t, worker)
			<-g.blocked // the case is open, its account pending

			tc.events(t, h, worker)
			h.waitConsumed(t) // the event and the grant are applied before the disable goes on
			if c := h.leaverCase(t, worker); c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN {
				t.Fatalf("case %v before the disable went on", c)
			}
			g.open()

			c := h.waitCase(t, worker, eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
			if len(c.Accounts) != 1 || c.Accounts[0].Status != "verified" || c.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
				t.Fatalf("case accounts %v", c.Accounts)
			}
			if !tc.back {
				a := h.waitLink(t, worker, eventsv1.AccountState_ACCOUNT_STATE_DISABLED)
				if st := targetAccount(t, mem, connector.AccountRef{Username: a.Username}).State; st != connector.StateDisabled {
					t.Fatalf("target account %v after the case", st)
				}
				return
			}
			// Rehired: the new access is enabled after the case completed, not before.
			a := h.waitLink(t, worker, eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
			if a.VerifiedAt.AsTime().Before(c.CompletedAt.AsTime()) {
				t.Fatalf("account verified enabled at %v, before the case completed at %v", a.VerifiedAt.AsTime(), c.CompletedAt.AsTime())
			}
			acct := targetAccount(t, mem, connector.AccountRef{Username: a.Username})
			if acct.State != connector.StateEnabled || len(acct.Entitlements) != 2 {
				t.Fatalf("target account %+v after the rehire", acct)
			}
		})
	}
}

// waitConsumed waits until the provisioner has handled every HR event and access decision
// published so far.
func (h *host) waitConsumed(t *testing.T) {
	t.Helper()
	eventually(t, "events and decisions handled", func() error {
		c, err := h.js.Consumer(context.Background(), natsx.EventsStream, durable)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return fmt.Errorf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// workerEvent publishes an HR event of kind and HR type for the worker, now in status st.
func (h *host) workerEvent(t *testing.T, worker string, kind eventsv1.WorkerEventKind, hrType string, st eventsv1.WorkerStatus) {
	h.publish(t, events.Subject("tenure.hr", hrType, worker), worker, &eventsv1.WorkerEvent{Kind: kind, HrEventType: hrType,
		Worker: &eventsv1.Worker{WorkerId: worker, Status: st}, EffectiveTime: timestamppb.Now()})
}
