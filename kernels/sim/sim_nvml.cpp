// A stand-in for NVIDIA's management library (`libnvidia-ml.so.1`, NVML), for tests on machines
// with no GPU: it implements the calls the data plane's GPU monitor makes (kernels/src/monitor.rs,
// through nvml-wrapper) and nothing else, so the image test can check the image's NVML exports
// every one of them.
//
// It shows two GPUs, listed as NVML lists them, by PCI bus id. The second sits where the CUDA
// stand-in (sim_driver.cpp) says its only device is (0000:41:00.0) and has its name and memory;
// the first is another GPU that CUDA does not show (as with CUDA_VISIBLE_DEVICES=1, or CUDA's
// fastest-first order): a monitor that took CUDA's device ordinal for NVML's index would report
// the wrong GPU, and each device's figures differ so a test can tell which one it got.
//
// Build: c++ -O2 -std=c++17 -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so sim_nvml.cpp

#include <cstdio>
#include <cstring>

extern "C" {

typedef int nvmlReturn_t;
enum : int {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
};

struct nvmlDevice_st {
    unsigned domain, bus, device;
    const char* name;
    unsigned long long memory_total, memory_used;
    unsigned utilization_gpu, utilization_memory;
    unsigned temperature_c;
    unsigned power_mw;
    unsigned long long clock_events;  // nvmlClocksThrottleReason* bits
    bool ecc;                         // ECC on (else its counters are not supported)
    unsigned long long ecc_corrected, ecc_uncorrected;
};
typedef nvmlDevice_st* nvmlDevice_t;

struct nvmlMemory_v2_t {
    unsigned version;
    unsigned long long total, reserved, free, used;
};

struct nvmlUtilization_t {
    unsigned gpu, memory;
};

}  // extern "C"

static nvmlDevice_st devices[] = {
    {0, 0x17, 0, "DWCP simulated GPU at 0000:17:00.0 (NVML stand-in; not the CUDA stand-in's)",
     2ull << 30, 1ull << 30, 93, 40, 77, 301000, 0x1, false, 0, 0},
    // The CUDA stand-in's device: its name (kernels::sim::DEVICE_NAME) and memory (1 GiB),
    // slowed by its software thermal limit (0x20), with three corrected ECC errors.
    {0, 0x41, 0, "DWCP simulated GPU (host CPU, libcuda stand-in)", 1ull << 30, 96ull << 20, 7,
     3, 41, 87250, 0x20, true, 3, 0},
};
static const unsigned DEVICES = sizeof(devices) / sizeof(devices[0]);
static int initialised = 0;

static bool known(nvmlDevice_t d) {
    for (unsigned i = 0; i < DEVICES; i++)
        if (d == &devices[i]) return true;
    return false;
}

extern "C" {

nvmlReturn_t nvmlInit_v2(void) {
    initialised++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
    if (initialised == 0) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}

const char* nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
        case NVML_SUCCESS: return "Success";
        case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
        case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
        case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
        case NVML_ERROR_NOT_FOUND: return "Not Found";
        case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
        case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
        default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned* count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = DEVICES;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, nvmlDevice_t* device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= DEVICES) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

// NVML takes "domain:bus:device.function", "domain:bus:device" or "bus:device.function", in hex.
nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char* id, nvmlDevice_t* device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!id || !device) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned domain = 0, bus = 0, dev = 0, function = 0;
    int end = 0;
    if (!((sscanf(id, "%x:%x:%x.%x%n", &domain, &bus, &dev, &function, &end) == 4 ||
           sscanf(id, "%x:%x:%x%n", &domain, &bus, &dev, &end) == 3 ||
           (domain = 0, sscanf(id, "%x:%x.%x%n", &bus, &dev, &function, &end) == 3)) &&
          id[end] == '\0'))
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < DEVICES; i++) {
        nvmlDevice_st& d = devices[i];
        if (d.domain == domain && d.bus == bus && d.device == dev && function == 0) {
            *device = &d;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char* name, unsigned length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !name) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(d->name) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(name, d->name, strlen(d->name) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t* m) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != (sizeof(nvmlMemory_v2_t) | (2u << 24)))
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = d->memory_total;
    m->reserved = 0;
    m->used = d->memory_used;
    m->free = d->memory_total - d->memory_used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t* u) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !u) return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = d->utilization_gpu;
    u->memory = d->utilization_memory;
    return NVML_SUCCESS;
}

// Sensor 0 is the GPU's core (NVML_TEMPERATURE_GPU), the only one NVML has.
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned* temp) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = d->temperature_c;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned* mw) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = d->power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long* r) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !r) return NVML_ERROR_INVALID_ARGUMENT;
    *r = d->clock_events;
    return NVML_SUCCESS;
}

// errorType 0 corrected, 1 uncorrected; counterType 0 volatile, 1 aggregate.
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int type, int counter,
                                         unsigned long long* count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!known(d) || !count || (type != 0 && type != 1) || (counter != 0 && counter != 1))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->ecc) return NVML_ERROR_NOT_SUPPORTED;
    *count = type == 0 ? d->ecc_corrected : d->ecc_uncorrected;
    return NVML_SUCCESS;
}

}  // extern "C"
