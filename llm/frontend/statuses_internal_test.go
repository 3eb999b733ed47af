package frontend

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every status the frontend's code gives a request (an apiError's Status,
// or one the answer returns) is in requestStatuses, so that none is
// counted in a series born at 1; TestEveryStatusAnsweredStartsAtZero
// answers one request with each. Only the route fallback's 405 is not:
// it answers before any request is read, and counts nothing.
func TestEveryStatusInTheCodeIsInRequestStatuses(t *testing.T) {
	src, err := os.ReadFile("http.go")
	if err != nil {
		t.Fatal(err)
	}
	decl := regexp.MustCompile(`(?s)var requestStatuses = \[\]int\{(.*?)\n\}`).FindSubmatch(src)
	if decl == nil {
		t.Fatal("http.go declares no requestStatuses = []int{...}")
	}
	name := regexp.MustCompile(`http\.Status\w+|statusClientClosed`)
	listed := make(map[string]bool)
	for _, line := range strings.Split(string(decl[1]), "\n") {
		line, _, _ = strings.Cut(line, "//")
		for _, n := range name.FindAllString(line, -1) {
			listed[n] = true
		}
	}
	if len(listed) != len(requestStatuses) {
		t.Fatalf("read %d names in requestStatuses' declaration, %v; it holds %d statuses", len(listed), listed, len(requestStatuses))
	}
	given := regexp.MustCompile(`(?:Status:|return)\s+(http\.Status\w+|statusClientClosed)\b`)
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range given.FindAllStringSubmatch(string(b), -1) {
			found++
			if !listed[m[1]] && m[1] != "http.StatusMethodNotAllowed" {
				t.Errorf("%s answers with %s, which is not in requestStatuses: add it, so that its count starts at 0", file, m[1])
			}
		}
	}
	if found == 0 {
		t.Fatal("found no status in the frontend's code: the pattern is out of date")
	}
}
