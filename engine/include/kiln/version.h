#pragma once
#define KILN_VERSION_STRING "0.1.0"
