//! Entry points. `_start` (the ELF entry) is entered by vmm in 64-bit long mode with the
//! identity map of CONTRACT.md and RSI = the Linux boot_params. `_start32` is the PVH entry
//! (ELF note XEN_ELFNOTE_PHYS32_ENTRY) that QEMU's `-kernel` uses: 32-bit protected mode, paging
//! off, EBX = hvm_start_info; it builds its own identity map of 0..4 GiB with 2 MiB pages and
//! switches to long mode. Both call `guest_main(info, kind)` on the guest's own stack
//! (kind 0 = boot_params, 1 = hvm_start_info).

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .code64
    .global _start
_start:
    cli
    cld
    lea rsp, [rip + {stack} + {stack_size}]
    mov rdi, rsi
    xor esi, esi
    call {main}
2:  hlt
    jmp 2b

    .code32
    .global _start32
_start32:
    cli
    cld
    mov esi, ebx
    /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories. */
    lea edi, [{pt}]
    lea eax, [{pt} + 0x1000 + 3]
    mov [edi], eax
    mov dword ptr [edi + 4], 0
    lea edi, [{pt} + 0x1000]
    lea eax, [{pt} + 0x2000 + 3]
    xor ecx, ecx
3:  mov [edi + ecx * 8], eax
    mov dword ptr [edi + ecx * 8 + 4], 0
    add eax, 0x1000
    inc ecx
    cmp ecx, 4
    jne 3b
    /* 2048 2 MiB pages: present, writable, PS; the top bits of the address go to the high word. */
    lea edi, [{pt} + 0x2000]
    xor ecx, ecx
4:  mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [edi + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov [edi + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jne 4b
    mov eax, cr4
    or eax, 0x620           /* PAE, OSFXSR, OSXMMEXCPT */
    mov cr4, eax
    lea eax, [{pt}]
    mov cr3, eax
    mov ecx, 0xc0000080     /* EFER.LME */
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000023      /* PG, NE, MP, PE */
    and eax, 0xfffffffb     /* no EM */
    mov cr0, eax
    lgdt [gdt64_ptr]
    push 0x08
    lea eax, [5f]
    push eax
    retf
    .code64
5:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + {stack} + {stack_size}]
    mov edi, esi
    mov esi, 1
    call {main}
6:  hlt
    jmp 6b

    .section .rodata.gdt, "a"
    .balign 16
gdt64:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt64_ptr:
    .word 23
    .quad gdt64

    /* PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18): name "Xen", 4-byte entry address. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start32
    .balign 4
"#,
    stack = sym STACK,
    stack_size = const STACK_SIZE,
    pt = sym PVH_PAGE_TABLES,
    main = sym crate::guest_main,
);

const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static mut STACK: Stack = Stack([0; STACK_SIZE]);

/// PML4, PDPT and four page directories for the PVH path (vmm provides its own).
#[repr(C, align(4096))]
struct PageTables([u8; 6 * 4096]);

static mut PVH_PAGE_TABLES: PageTables = PageTables([0; 6 * 4096]);
