package provisioner

import (
	"context"

	"github.com/tenure-dev/tenure/pkg/connector"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// What operators see of a case and of findings stays true to the target.

// noteReadBack records on the case's account what a read-back that disagreed with the
// desired state found, so the case's READ BACK column shows the target's answer (an
// account still enabled after a disable) rather than nothing.
func (s *Service) noteReadBack(ctx context.Context, cmd *eventsv1.ProvisionCommand, linkID string, a connector.Account) {
	if cmd.GetCaseId() == "" {
		return
	}
	if _, err := s.pool.Exec(ctx, `UPDATE case_accounts SET observed_state = $3 WHERE case_id = $1 AND link_id = $2 AND status <> 'verified'`,
		cmd.GetCaseId(), linkID, a.State.String()); err != nil {
		s.log.WarnContext(ctx, "record read-back", "link", linkID, "err", err)
	}
}

// resolveOrphanFinding closes the open orphan finding of an account an operator has just
// linked to its worker: it is no longer an orphan, and need not wait for the next
// reconciliation to say so.
func (s *Service) resolveOrphanFinding(ctx context.Context, conn, username, linkID string) error {
	_, err := s.pool.Exec(ctx, `UPDATE findings SET status = 'resolved', resolved_at = now(), link_id = $3
		WHERE connector = $1 AND username = $2 AND kind = 'orphan' AND status = 'open'`, conn, username, linkID)
	return err
}
