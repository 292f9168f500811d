package auth

import (
	"crypto/md5"
	"encoding/hex"
	"testing"

	"github.com/xdg-go/scram"
)

func runSCRAM(t *testing.T, v *Verifiers, serverPass, clientPass string, known bool) bool {
	t.Helper()
	srv, err := v.NewSCRAM("app", serverPass, known)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := scram.SHA256.NewClient("", clientPass, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := cl.NewConversation()
	first, _ := conv.Step("")
	sfirst, err := srv.Step([]byte(first))
	if err != nil {
		return false
	}
	final, err := conv.Step(string(sfirst))
	if err != nil {
		t.Fatal(err)
	}
	sfinal, err := srv.Step([]byte(final))
	if err != nil || !srv.Valid() {
		return false
	}
	if _, err := conv.Step(string(sfinal)); err != nil {
		t.Fatalf("client rejected server signature: %v", err)
	}
	return true
}

func TestSCRAM(t *testing.T) {
	v := NewVerifiers()
	if !runSCRAM(t, v, "secret", "secret", true) {
		t.Fatal("right password refused")
	}
	if !runSCRAM(t, v, "secret", "secret", true) {
		t.Fatal("right password refused on the cached verifier")
	}
	if runSCRAM(t, v, "secret", "wrong", true) {
		t.Fatal("wrong password accepted")
	}
	if runSCRAM(t, v, "secret", "secret", false) {
		t.Fatal("unknown user accepted")
	}
}

func TestMD5(t *testing.T) {
	salt := [4]byte{1, 2, 3, 4}
	inner := md5.Sum([]byte("pw" + "bob"))
	outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt[:]...))
	msg := "md5" + hex.EncodeToString(outer[:])
	if !MD5Verify("bob", "pw", salt, msg) {
		t.Fatal("right md5 refused")
	}
	if MD5Verify("bob", "other", salt, msg) {
		t.Fatal("wrong md5 accepted")
	}
}
