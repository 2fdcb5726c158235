// PCI configuration-space register offsets and bit constants.
//
// Values come from the PCI Local Bus 3.0, PCI Power Management 1.2 and PCI
// Express Base specifications (the same names as Linux's pci_regs.h,
// spelled in our style: PCI_VENDOR_ID -> kPciVendorId). Capability register
// offsets are relative to the capability's start. Pure constants.
#ifndef VFIO_USER_SERVER_PCI_PCI_IDS_H_
#define VFIO_USER_SERVER_PCI_PCI_IDS_H_

#include <cstdint>

namespace vfio_user {

// ---- Sizes ----
inline constexpr uint32_t kPciConfigSpaceSize = 256;         // conventional
inline constexpr uint32_t kPciExpressConfigSpaceSize = 4096;  // PCIe
inline constexpr uint32_t kPciStdHeaderSize = 0x40;           // type-0 header
inline constexpr uint32_t kPciExtCapStart = 0x100;            // first extended cap
inline constexpr int kPciNumBars = 6;

// ---- Type-0 header ----
inline constexpr uint16_t kPciVendorId = 0x00;            // 16 bits
inline constexpr uint16_t kPciDeviceId = 0x02;            // 16 bits
inline constexpr uint16_t kPciCommand = 0x04;             // 16 bits
inline constexpr uint16_t kPciStatus = 0x06;              // 16 bits
inline constexpr uint16_t kPciRevisionId = 0x08;          // 8 bits
inline constexpr uint16_t kPciClassProg = 0x09;           // 8 bits: programming interface
inline constexpr uint16_t kPciClassDevice = 0x0a;         // 16 bits: base class << 8 | sub-class
inline constexpr uint16_t kPciCacheLineSize = 0x0c;       // 8 bits
inline constexpr uint16_t kPciLatencyTimer = 0x0d;        // 8 bits
inline constexpr uint16_t kPciHeaderType = 0x0e;          // 8 bits
inline constexpr uint16_t kPciBist = 0x0f;                // 8 bits
inline constexpr uint16_t kPciBaseAddress0 = 0x10;        // 32 bits each, 6 of them
inline constexpr uint16_t kPciCardbusCis = 0x28;          // 32 bits
inline constexpr uint16_t kPciSubsystemVendorId = 0x2c;   // 16 bits
inline constexpr uint16_t kPciSubsystemId = 0x2e;         // 16 bits
inline constexpr uint16_t kPciRomAddress = 0x30;          // 32 bits
inline constexpr uint16_t kPciCapabilityList = 0x34;      // 8 bits: first cap offset
inline constexpr uint16_t kPciInterruptLine = 0x3c;       // 8 bits
inline constexpr uint16_t kPciInterruptPin = 0x3d;        // 8 bits: 0 none, 1..4 = INTA..INTD
inline constexpr uint16_t kPciMinGnt = 0x3e;              // 8 bits
inline constexpr uint16_t kPciMaxLat = 0x3f;              // 8 bits

constexpr uint16_t PciBarOffset(int index) {
  return static_cast<uint16_t>(kPciBaseAddress0 + 4 * index);
}

// Command register bits.
inline constexpr uint16_t kPciCommandIo = 0x0001;
inline constexpr uint16_t kPciCommandMemory = 0x0002;
inline constexpr uint16_t kPciCommandMaster = 0x0004;
inline constexpr uint16_t kPciCommandSpecial = 0x0008;
inline constexpr uint16_t kPciCommandInvalidate = 0x0010;
inline constexpr uint16_t kPciCommandVgaPalette = 0x0020;
inline constexpr uint16_t kPciCommandParity = 0x0040;
inline constexpr uint16_t kPciCommandWait = 0x0080;
inline constexpr uint16_t kPciCommandSerr = 0x0100;
inline constexpr uint16_t kPciCommandFastBack = 0x0200;
inline constexpr uint16_t kPciCommandIntxDisable = 0x0400;

// Status register bits.
inline constexpr uint16_t kPciStatusInterrupt = 0x0008;      // INTx asserted (RO)
inline constexpr uint16_t kPciStatusCapList = 0x0010;        // capability list present (RO)
inline constexpr uint16_t kPciStatus66Mhz = 0x0020;
inline constexpr uint16_t kPciStatusFastBack = 0x0080;
inline constexpr uint16_t kPciStatusParity = 0x0100;         // master data parity error (RW1C)
inline constexpr uint16_t kPciStatusDevselMask = 0x0600;
inline constexpr uint16_t kPciStatusSigTargetAbort = 0x0800;  // RW1C
inline constexpr uint16_t kPciStatusRecTargetAbort = 0x1000;  // RW1C
inline constexpr uint16_t kPciStatusRecMasterAbort = 0x2000;  // RW1C
inline constexpr uint16_t kPciStatusSigSystemError = 0x4000;  // RW1C
inline constexpr uint16_t kPciStatusDetectedParity = 0x8000;  // RW1C
inline constexpr uint16_t kPciStatusErrorBits =
    kPciStatusParity | kPciStatusSigTargetAbort | kPciStatusRecTargetAbort |
    kPciStatusRecMasterAbort | kPciStatusSigSystemError | kPciStatusDetectedParity;

// Header type.
inline constexpr uint8_t kPciHeaderTypeNormal = 0x00;
inline constexpr uint8_t kPciHeaderTypeMultifunction = 0x80;

// Base address registers.
inline constexpr uint32_t kPciBaseAddressSpaceIo = 0x1;      // bit 0: I/O space
inline constexpr uint32_t kPciBaseAddressMemType64 = 0x4;    // bits 2:1 = 10b: 64-bit
inline constexpr uint32_t kPciBaseAddressMemPrefetch = 0x8;
inline constexpr uint32_t kPciBaseAddressIoMask = ~0x3u;
inline constexpr uint32_t kPciBaseAddressMemMask = ~0xfu;
inline constexpr uint32_t kPciRomAddressEnable = 0x1;
inline constexpr uint32_t kPciRomAddressMask = ~0x7ffu;

// ---- Capability list ----
inline constexpr uint16_t kPciCapListId = 0;    // 8 bits
inline constexpr uint16_t kPciCapListNext = 1;  // 8 bits
inline constexpr uint8_t kPciCapIdPm = 0x01;
inline constexpr uint8_t kPciCapIdMsi = 0x05;
inline constexpr uint8_t kPciCapIdVendor = 0x09;
inline constexpr uint8_t kPciCapIdExp = 0x10;
inline constexpr uint8_t kPciCapIdMsix = 0x11;

// ---- Power management capability (v1.2: "version 3") ----
inline constexpr uint16_t kPciPmPmc = 2;       // 16 bits: capabilities
inline constexpr uint16_t kPciPmCtrl = 4;      // 16 bits: PMCSR
inline constexpr uint16_t kPciPmSizeof = 8;
inline constexpr uint16_t kPciPmCapVersionMask = 0x0007;
inline constexpr uint16_t kPciPmCtrlStateMask = 0x0003;
inline constexpr uint16_t kPciPmCtrlNoSoftReset = 0x0008;
inline constexpr uint16_t kPciPmCtrlPmeEnable = 0x0100;
inline constexpr uint16_t kPciPmCtrlPmeStatus = 0x8000;

// ---- MSI capability ----
inline constexpr uint16_t kPciMsiFlags = 2;         // 16 bits: message control
inline constexpr uint16_t kPciMsiFlagsEnable = 0x0001;
inline constexpr uint16_t kPciMsiFlagsQmask = 0x000e;   // multiple message capable
inline constexpr uint16_t kPciMsiFlagsQsize = 0x0070;   // multiple message enable
inline constexpr uint16_t kPciMsiFlags64Bit = 0x0080;
inline constexpr uint16_t kPciMsiFlagsMaskBit = 0x0100;  // per-vector masking capable
inline constexpr uint16_t kPciMsiAddressLo = 4;
inline constexpr uint16_t kPciMsiAddressHi = 8;      // 64-bit only
inline constexpr uint16_t kPciMsiData32 = 8;
inline constexpr uint16_t kPciMsiData64 = 12;
inline constexpr uint16_t kPciMsiMask32 = 12;
inline constexpr uint16_t kPciMsiMask64 = 16;
inline constexpr uint16_t kPciMsiPending32 = 16;
inline constexpr uint16_t kPciMsiPending64 = 20;

// ---- MSI-X capability and table ----
inline constexpr uint16_t kPciMsixFlags = 2;        // 16 bits: message control
inline constexpr uint16_t kPciMsixFlagsQsize = 0x07ff;   // table size - 1
inline constexpr uint16_t kPciMsixFlagsMaskAll = 0x4000;  // function mask
inline constexpr uint16_t kPciMsixFlagsEnable = 0x8000;
inline constexpr uint16_t kPciMsixTable = 4;        // 32 bits: offset | BIR
inline constexpr uint16_t kPciMsixPba = 8;          // 32 bits: offset | BIR
inline constexpr uint32_t kPciMsixBirMask = 0x7;
inline constexpr uint16_t kPciMsixSizeof = 12;
inline constexpr uint32_t kPciMsixEntrySize = 16;
inline constexpr uint32_t kPciMsixEntryLowerAddr = 0;
inline constexpr uint32_t kPciMsixEntryUpperAddr = 4;
inline constexpr uint32_t kPciMsixEntryData = 8;
inline constexpr uint32_t kPciMsixEntryVectorCtrl = 12;
inline constexpr uint32_t kPciMsixEntryCtrlMaskBit = 0x1;
inline constexpr uint32_t kPciMsixMaxVectors = 2048;

// ---- PCI Express capability (version 2 layout) ----
inline constexpr uint16_t kPciExpFlags = 2;          // 16 bits
inline constexpr uint16_t kPciExpFlagsVersionMask = 0x000f;
inline constexpr uint16_t kPciExpFlagsTypeShift = 4;
inline constexpr uint16_t kPciExpDevCap = 4;         // 32 bits
inline constexpr uint32_t kPciExpDevCapPayloadMask = 0x00000007;
inline constexpr uint32_t kPciExpDevCapExtTag = 0x00000020;
inline constexpr uint32_t kPciExpDevCapRoleBasedError = 0x00008000;
inline constexpr uint32_t kPciExpDevCapFlr = 0x10000000;
inline constexpr uint16_t kPciExpDevCtl = 8;         // 16 bits
inline constexpr uint16_t kPciExpDevCtlCere = 0x0001;   // correctable error reporting
inline constexpr uint16_t kPciExpDevCtlNfere = 0x0002;  // non-fatal error reporting
inline constexpr uint16_t kPciExpDevCtlFere = 0x0004;   // fatal error reporting
inline constexpr uint16_t kPciExpDevCtlUrre = 0x0008;   // unsupported request reporting
inline constexpr uint16_t kPciExpDevCtlRelaxEn = 0x0010;
inline constexpr uint16_t kPciExpDevCtlPayloadMask = 0x00e0;
inline constexpr uint16_t kPciExpDevCtlExtTag = 0x0100;
inline constexpr uint16_t kPciExpDevCtlNoSnoopEn = 0x0800;
inline constexpr uint16_t kPciExpDevCtlReadrqMask = 0x7000;
inline constexpr uint16_t kPciExpDevCtlReadrq512 = 0x2000;
inline constexpr uint16_t kPciExpDevCtlBcrFlr = 0x8000;  // initiate FLR
inline constexpr uint16_t kPciExpDevSta = 10;        // 16 bits
inline constexpr uint16_t kPciExpDevStaCed = 0x0001;  // RW1C
inline constexpr uint16_t kPciExpDevStaNfed = 0x0002;
inline constexpr uint16_t kPciExpDevStaFed = 0x0004;
inline constexpr uint16_t kPciExpDevStaUrd = 0x0008;
inline constexpr uint16_t kPciExpDevStaTransPending = 0x0020;
inline constexpr uint16_t kPciExpLnkCap = 12;        // 32 bits
inline constexpr uint16_t kPciExpLnkCtl = 16;        // 16 bits
inline constexpr uint16_t kPciExpLnkSta = 18;        // 16 bits
inline constexpr uint16_t kPciExpLnkStaSlotClock = 0x1000;
inline constexpr uint16_t kPciExpDevCap2 = 36;       // 32 bits
inline constexpr uint16_t kPciExpDevCtl2 = 40;       // 16 bits
inline constexpr uint16_t kPciExpLnkCap2 = 44;       // 32 bits
inline constexpr uint16_t kPciExpLnkCtl2 = 48;       // 16 bits
inline constexpr uint16_t kPciExpLnkSta2 = 50;       // 16 bits
inline constexpr uint16_t kPciExpSizeofV2 = 60;
// Device/port types (kPciExpFlags bits 7:4).
inline constexpr uint8_t kPciExpTypeEndpoint = 0x0;
inline constexpr uint8_t kPciExpTypeLegacyEndpoint = 0x1;
inline constexpr uint8_t kPciExpTypeRcEndpoint = 0x9;  // root-complex integrated

// ---- Extended capabilities (PCIe, at 0x100 and above) ----
// Header: id in bits 15:0, version in 19:16, next offset in 31:20.
constexpr uint32_t PciExtCapHeader(uint16_t id, uint8_t version, uint16_t next) {
  return uint32_t{id} | (uint32_t{version} & 0xf) << 16 | (uint32_t{next} & 0xfff) << 20;
}
constexpr uint16_t PciExtCapId(uint32_t header) { return header & 0xffff; }
constexpr uint8_t PciExtCapVersion(uint32_t header) { return (header >> 16) & 0xf; }
constexpr uint16_t PciExtCapNext(uint32_t header) { return header >> 20; }

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_PCI_PCI_IDS_H_
