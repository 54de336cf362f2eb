package app

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
)

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// quoteLiteral quotes a SQL string literal (utility statements take no parameters).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
