package provisioner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// Operators list the cases that need them: an overdue case (its disable keeps failing) comes
// first and is in the overdue list with its failing account; a completed one is not open.
func TestListCasesShowsOverdueFirst(t *testing.T) {
	mem, policy := failingDisableTarget()
	ok := connectortest.NewMemory("readers")
	h := startHost(t, Config{Targets: []Target{{Name: "ehr", Type: "memory", Conn: mem, Policy: policy}, {Name: "wiki", Type: "memory", Conn: ok}},
		CaseDeadline: 500 * time.Millisecond, OverdueInterval: 50 * time.Millisecond})
	ctx := context.Background()
	h.hire(t, "w-late", "ehr")
	h.hire(t, "w-done", "wiki")
	h.waitVerified(t, "w-late", 1)
	h.waitVerified(t, "w-done", 1)
	h.fire(t, "w-late")
	h.fire(t, "w-done")
	var overdue *provisionerv1.ListCasesResponse
	eventually(t, "the overdue case listed", func() error {
		var err error
		if overdue, err = h.svc.ListCases(ctx, &provisionerv1.ListCasesRequest{Status: "overdue"}); err != nil {
			return err
		}
		if len(overdue.Cases) != 1 || overdue.Cases[0].WorkerId != "w-late" || overdue.Cases[0].Failing != 1 || overdue.Cases[0].Verified != 0 {
			return fmt.Errorf("overdue %v", overdue.Cases)
		}
		return nil
	})
	done, err := h.svc.ListCases(ctx, &provisionerv1.ListCasesRequest{Status: "completed"})
	if err != nil || len(done.Cases) != 1 || done.Cases[0].WorkerId != "w-done" || done.Cases[0].Verified != 1 ||
		done.Cases[0].Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
		t.Fatalf("completed %v, %v", done, err)
	}
	all, err := h.svc.ListCases(ctx, &provisionerv1.ListCasesRequest{Status: "all"})
	if err != nil || len(all.Cases) != 2 || all.Cases[0].WorkerId != "w-late" {
		t.Fatalf("all %v, %v: the open case comes first", all, err)
	}
	if _, err := h.svc.ListCases(ctx, &provisionerv1.ListCasesRequest{Status: "late"}); err == nil {
		t.Fatal("an unknown status was accepted")
	}
}
