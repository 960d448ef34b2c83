package diskemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mount is a read-only FUSE filesystem at Dir mirroring a backing
// directory, every READ delayed by the device model.
type Mount struct {
	Dir     string
	Model   Model
	backing string
	server  *fuse.Server
	dev     *device
	// Overhead is the FUSE round trip measured with the model off (4 KiB
	// read, p50), OverheadPerKiB its growth per KiB read; Calibrate
	// subtracts both from every request's modelled time.
	Overhead, OverheadPerKiB time.Duration
}

type node struct {
	gofs.Inode
	path string
	size int64
	dev  *device
}

var (
	_ gofs.NodeOpener    = (*node)(nil)
	_ gofs.NodeReader    = (*node)(nil)
	_ gofs.NodeGetattrer = (*node)(nil)
)

type handle struct{ f *os.File }

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	f, err := os.Open(n.path)
	if err != nil {
		return nil, 0, gofs.ToErrno(err)
	}
	// Keep the page cache across opens, as a block-device filesystem does.
	return &handle{f}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off >= n.size {
		return fuse.ReadResultData(nil), 0
	}
	want := int(min(int64(len(dest)), n.size-off))
	k, err := h.f.ReadAt(dest[:want], off)
	if err != nil && k < want {
		return nil, gofs.ToErrno(err)
	}
	n.dev.wait(k)
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *node) Release(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	if h, ok := fh.(*handle); ok {
		h.f.Close()
	}
	return 0
}

func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(n.size)
	out.Blksize = 4096
	out.Blocks = (uint64(n.size) + 511) / 512
	return 0
}

// NewMount serves backing (a directory, normally on tmpfs so backing reads
// cost little next to the model) read-only at dir through model m. The
// tree is read once: files added to backing later are not visible.
func NewMount(dir, backing string, m Model) (*Mount, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("the %s storage model needs /dev/fuse (FUSE): %w", m.Name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	mt := &Mount{Dir: dir, Model: m, backing: backing, dev: newDevice(m)}
	root := &gofs.Inode{}
	var walkErr error
	onAdd := func(ctx context.Context) {
		dirs := map[string]*gofs.Inode{".": root}
		walkErr = filepath.WalkDir(backing, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(backing, p)
			if rel == "." {
				return nil
			}
			parent := dirs[filepath.Dir(rel)]
			if parent == nil {
				return nil
			}
			name := filepath.Base(rel)
			switch {
			case de.IsDir():
				ch := parent.NewPersistentInode(ctx, &gofs.Inode{}, gofs.StableAttr{Mode: syscall.S_IFDIR})
				parent.AddChild(name, ch, true)
				dirs[rel] = ch
			case de.Type().IsRegular():
				st, err := os.Stat(p)
				if err != nil {
					return err
				}
				ch := parent.NewPersistentInode(ctx, &node{path: p, size: st.Size(), dev: mt.dev}, gofs.StableAttr{Mode: syscall.S_IFREG})
				parent.AddChild(name, ch, true)
			}
			return nil
		})
	}
	hour := time.Hour
	opts := &gofs.Options{
		EntryTimeout: &hour, AttrTimeout: &hour, NegativeTimeout: &hour,
		OnAdd: onAdd,
		MountOptions: fuse.MountOptions{
			FsName: "aquifer-" + m.Name + "-model", Name: "aquifer",
			DirectMount:   true,
			MaxWrite:      m.MaxRequestKB << 10,
			MaxReadAhead:  max(m.ReadAheadKB, 4) << 10,
			MaxBackground: 64, // async readahead requests in flight (the device's queue)
			DisableXAttrs: true,
		},
	}
	server, err := gofs.Mount(dir, root, opts)
	if err != nil {
		mt.dev.close()
		return nil, fmt.Errorf("mounting the %s model at %s: %w", m.Name, dir, err)
	}
	mt.server = server
	if walkErr != nil {
		mt.Close()
		return nil, fmt.Errorf("reading %s: %w", backing, walkErr)
	}
	if err := mt.setReadAhead(m.ReadAheadKB); err != nil {
		mt.Close()
		return nil, err
	}
	return mt, nil
}

// Path returns the path under the mount of a file in the backing directory.
func (mt *Mount) Path(backingPath string) (string, error) {
	rel, err := relUnder(mt.backing, backingPath)
	if err != nil {
		return "", err
	}
	return filepath.Join(mt.Dir, rel), nil
}

// setReadAhead sets the FUSE backing device's read_ahead_kb.
func (mt *Mount) setReadAhead(kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(mt.Dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(fmt.Sprint(kb)), 0o644); err != nil {
		return fmt.Errorf("setting read_ahead_kb of the %s model (%s): %w", mt.Model.Name, p, err)
	}
	return nil
}

// ReadAheadKB reads back the mount's read_ahead_kb.
func (mt *Mount) ReadAheadKB() (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(mt.Dir, &st); err != nil {
		return 0, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return 0, err
	}
	var kb int
	_, err = fmt.Sscan(strings.TrimSpace(string(b)), &kb)
	return kb, err
}

// Stats returns the requests served so far.
func (mt *Mount) Stats() Stats { return mt.dev.snapshot() }

// Close unmounts (lazily if a file is still open) and stops the device.
func (mt *Mount) Close() error {
	var err error
	if mt.server != nil {
		if err = mt.server.Unmount(); err != nil {
			if e := unix.Unmount(mt.Dir, unix.MNT_DETACH); e == nil {
				err = nil
			} else {
				err = errors.Join(err, e)
			}
		}
		mt.server = nil
	}
	mt.dev.close()
	return err
}
