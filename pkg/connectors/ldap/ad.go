package ldap

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Active Directory's userAccountControl flags (MS-ADTS 2.2.16) that the connector touches.
const (
	uacAccountDisable = 0x2   // ACCOUNTDISABLE: the account cannot sign in
	uacNormalAccount  = 0x200 // NORMAL_ACCOUNT: a user account
)

// uacState reads the account state from a userAccountControl value. An empty or unreadable
// value says nothing.
func uacState(v string) (disabled bool, ok bool) {
	n, err := parseUAC(v)
	if err != nil {
		return false, false
	}
	return n&uacAccountDisable != 0, true
}

// parseUAC parses userAccountControl. AD stores it as a 32-bit integer and returns it in
// decimal; values with the top bit set may come back negative from some servers, so both
// readings are accepted.
func parseUAC(v string) (uint32, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, fmt.Errorf("userAccountControl is empty")
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return uint32(n), nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("userAccountControl %q is not a 32-bit integer", v)
	}
	return uint32(n), nil
}

// withDisabled returns v with ACCOUNTDISABLE set or cleared, leaving every other flag (password
// never expires, smartcard required, delegation settings) as the directory had it.
func withDisabled(v uint32, disabled bool) uint32 {
	if disabled {
		return v | uacAccountDisable
	}
	return v &^ uacAccountDisable
}

// formatUAC is how AD expects the value written: a decimal integer.
func formatUAC(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// guidString formats a 16-byte objectGUID the way AD tools show it
// (e.g. "ba6e9c38-8e5c-4dcd-a45e-1d6e4c2d3a8f"): the first three fields are little-endian.
func guidString(b []byte) (string, error) {
	if len(b) != 16 {
		return "", fmt.Errorf("objectGUID has %d bytes, want 16", len(b))
	}
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16]), nil
}

// guidBytes is the inverse of guidString.
func guidBytes(s string) ([]byte, error) {
	h := strings.ReplaceAll(strings.Trim(s, "{}"), "-", "")
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != 16 || len(s) != 36 && len(s) != 38 {
		return nil, fmt.Errorf("account id %q is not an objectGUID", s)
	}
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:4], binary.BigEndian.Uint32(raw[0:4]))
	binary.LittleEndian.PutUint16(b[4:6], binary.BigEndian.Uint16(raw[4:6]))
	binary.LittleEndian.PutUint16(b[6:8], binary.BigEndian.Uint16(raw[6:8]))
	copy(b[8:], raw[8:])
	return b, nil
}

// escapeBytes writes raw bytes as an RFC 4515 filter value (\xx for every byte), which is how
// a binary attribute such as objectGUID is matched.
func escapeBytes(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, `\%02x`, c)
	}
	return sb.String()
}
