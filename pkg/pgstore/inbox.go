package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Claim records that consumer handles msgID in tx. It reports false when the message was
// handled before: the caller then skips its work and acks. Because the row is written in the
// handler's own transaction, a crash before commit leaves no trace and the redelivery runs
// the work again; a crash after commit makes the redelivery a no-op.
func Claim(ctx context.Context, tx pgx.Tx, consumer, msgID, subject string) (bool, error) {
	tag, err := tx.Exec(ctx, "INSERT INTO inbox (consumer, msg_id, subject) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", consumer, msgID, subject)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}
